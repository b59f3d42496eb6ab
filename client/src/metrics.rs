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
//!
//! Push round trips also go into a [`LatencyHistogram`] of fixed log-linear buckets (one relaxed
//! atomic add per push, no lock): [`ClientMetrics::push_latency`] reads it, for percentiles.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use metrics::{describe_counter, Counter, Unit};

/// The client's counters, cheap to clone (clones count into the same totals).
#[derive(Debug, Clone)]
pub struct ClientMetrics {
    push_bytes: Counter,
    push_retries: Counter,
    revives: Counter,
    fetch_retries: Counter,
    data_lost: Counter,
    timeouts: Counter,
    hedges: Counter,
    totals: Arc<Totals>,
    push_latency: Arc<LatencyHistogram>,
}

#[derive(Debug, Default)]
struct Totals {
    push_bytes: AtomicU64,
    push_retries: AtomicU64,
    revives: AtomicU64,
    fetch_retries: AtomicU64,
    data_lost: AtomicU64,
    timeouts: AtomicU64,
    hedges: AtomicU64,
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
    /// Push and fetch requests that got no answer within their (adaptive) timeout.
    pub timeouts: u64,
    /// Reads that moved to another copy because the copy being read was slow to answer.
    pub hedges: u64,
}

impl ClientMetricsSnapshot {
    /// The names of [`ClientMetricsSnapshot::to_array`]'s values, in its order (the JVM's
    /// `SluiceNative.clientMetrics` answers in this order too).
    pub const NAMES: [&'static str; 7] = [
        "push_bytes",
        "push_retries",
        "revives",
        "fetch_retries",
        "data_lost",
        "timeouts",
        "hedges",
    ];

    /// The totals in the order of [`ClientMetricsSnapshot::NAMES`].
    pub fn to_array(&self) -> [u64; 7] {
        [
            self.push_bytes,
            self.push_retries,
            self.revives,
            self.fetch_retries,
            self.data_lost,
            self.timeouts,
            self.hedges,
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
        describe_counter!(
            "sluice_client_timeouts_total",
            Unit::Count,
            "Push and fetch requests that got no answer within their timeout (adapted to each worker's observed latency)."
        );
        describe_counter!(
            "sluice_client_hedges_total",
            Unit::Count,
            "Reads moved to another copy because the copy being read was slow to answer."
        );
        ClientMetrics {
            push_bytes: metrics::counter!("sluice_client_push_bytes_total"),
            push_retries: metrics::counter!("sluice_client_push_retries_total"),
            revives: metrics::counter!("sluice_client_revives_total"),
            fetch_retries: metrics::counter!("sluice_client_fetch_retries_total"),
            data_lost: metrics::counter!("sluice_client_data_lost_total"),
            timeouts: metrics::counter!("sluice_client_timeouts_total"),
            hedges: metrics::counter!("sluice_client_hedges_total"),
            totals: Arc::default(),
            push_latency: Arc::new(LatencyHistogram::new()),
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
            timeouts: load(&t.timeouts),
            hedges: load(&t.hedges),
        }
    }

    /// Round trips of the pushes acked so far (send to ack, one per push request that
    /// succeeded; failed attempts and their retries are not in it).
    pub fn push_latency(&self) -> LatencySnapshot {
        self.push_latency.snapshot()
    }

    pub(crate) fn push_round_trip(&self, elapsed: Duration) {
        self.push_latency.record(elapsed);
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

    pub(crate) fn timeout(&self) {
        self.timeouts.increment(1);
        self.totals.timeouts.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn hedge(&self) {
        self.hedges.increment(1);
        self.totals.hedges.fetch_add(1, Ordering::Relaxed);
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

/// Sub-buckets per power of two: 8 keeps a bucket's width within 12.5% of its values.
const SUB_BITS: u32 = 3;
const SUBS: usize = 1 << SUB_BITS;
/// Powers of two covered above the exact values: durations past 2^43 µs (about 100 days) share
/// the last bucket.
const OCTAVES: usize = 40;
const BUCKETS: usize = (OCTAVES + 1) * SUBS;

/// Durations in microseconds counted into log-linear buckets: values below 8 µs exactly, then
/// 8 buckets per power of two. Recording is one relaxed `fetch_add`; a percentile is read as the
/// upper bound of the bucket holding it, so it is at most 12.5% above the true value.
#[derive(Debug)]
pub struct LatencyHistogram {
    buckets: Box<[AtomicU64]>,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram::new()
    }
}

impl LatencyHistogram {
    pub fn new() -> LatencyHistogram {
        LatencyHistogram {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    pub fn record(&self, elapsed: Duration) {
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.buckets[bucket_of(micros)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> LatencySnapshot {
        LatencySnapshot {
            counts: self
                .buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
        }
    }
}

fn bucket_of(micros: u64) -> usize {
    if micros < SUBS as u64 {
        return micros as usize;
    }
    let octave = 63 - micros.leading_zeros(); // >= SUB_BITS
    let sub = (micros >> (octave - SUB_BITS)) as usize & (SUBS - 1);
    ((octave - SUB_BITS + 1) as usize * SUBS + sub).min(BUCKETS - 1)
}

/// The largest value (µs) counted into `bucket`.
fn bucket_upper(bucket: usize) -> u64 {
    if bucket < SUBS {
        return bucket as u64;
    }
    let octave = (bucket / SUBS) as u32 + SUB_BITS - 1;
    let sub = (bucket % SUBS) as u64;
    ((SUBS as u64 + sub + 1) << (octave - SUB_BITS)) - 1
}

/// A histogram's counts at one moment; two of them subtract, for the figures of one period.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LatencySnapshot {
    counts: Vec<u64>,
}

impl LatencySnapshot {
    /// Durations counted.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// What was counted since `earlier` (a snapshot of the same histogram).
    pub fn since(&self, earlier: &LatencySnapshot) -> LatencySnapshot {
        LatencySnapshot {
            counts: self
                .counts
                .iter()
                .enumerate()
                .map(|(i, c)| c.saturating_sub(earlier.counts.get(i).copied().unwrap_or(0)))
                .collect(),
        }
    }

    /// The `q` quantile (0.5 for the median, 0.99...) as the upper bound of its bucket; `None`
    /// when nothing was counted.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        // The rank of the value asked for, 1-based: at least the first, at most the last.
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (bucket, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Some(Duration::from_micros(bucket_upper(bucket)));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_within_an_eighth() {
        let mut previous_upper = None;
        for bucket in 0..BUCKETS - 1 {
            let upper = bucket_upper(bucket);
            assert_eq!(bucket_of(upper), bucket, "bucket {bucket}");
            assert_eq!(bucket_of(upper + 1), bucket + 1, "bucket {bucket}");
            if let Some(previous) = previous_upper {
                let lower: u64 = previous + 1;
                assert!(
                    (upper - lower) as f64 <= lower as f64 / 8.0,
                    "bucket {bucket}"
                );
            }
            previous_upper = Some(upper);
        }
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn quantiles_come_from_the_counts_of_a_period() {
        let histogram = LatencyHistogram::new();
        assert_eq!(histogram.snapshot().quantile(0.5), None);
        for ms in 1..=100 {
            histogram.record(Duration::from_millis(ms));
        }
        let first = histogram.snapshot();
        let p50 = first.quantile(0.5).unwrap();
        let p99 = first.quantile(0.99).unwrap();
        assert!(
            p50 >= Duration::from_millis(50) && p50 <= Duration::from_micros(56_250),
            "{p50:?}"
        );
        assert!(
            p99 >= Duration::from_millis(99) && p99 <= Duration::from_micros(111_375),
            "{p99:?}"
        );
        for _ in 0..10 {
            histogram.record(Duration::from_secs(2));
        }
        let period = histogram.snapshot().since(&first);
        assert_eq!(period.count(), 10);
        let p50 = period.quantile(0.5).unwrap();
        assert!(
            p50 >= Duration::from_secs(2) && p50 <= Duration::from_millis(2250),
            "{p50:?}"
        );
    }

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
        clone.timeout();
        clone.timeout();
        metrics.hedge();
        let snapshot = metrics.snapshot();
        assert_eq!(snapshot.to_array(), [100, 1, 1, 1, 1, 2, 1]);
        assert_eq!(ClientMetricsSnapshot::NAMES[0], "push_bytes");
    }
}
