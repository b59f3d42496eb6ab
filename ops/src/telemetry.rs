//! A per-component Prometheus registry behind the `metrics` facade.

use std::sync::{Arc, Mutex};

use metrics::Recorder;
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

/// Buckets of every `*_seconds` histogram: 100 µs to 60 s, enough resolution for
/// `histogram_quantile` on a push (sub-millisecond) and on a commit (seconds).
pub const LATENCY_BUCKETS: [f64; 19] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 20.0, 30.0, 60.0,
];

type Collector = Box<dyn Fn() + Send + Sync>;

/// One component's metrics: its registry (absent when metrics are off) and the collectors that
/// refresh gauges read from its state just before each scrape.
pub struct Telemetry {
    registry: Option<(PrometheusRecorder, PrometheusHandle)>,
    collectors: Mutex<Vec<Collector>>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("enabled", &self.enabled())
            .finish_non_exhaustive()
    }
}

impl Telemetry {
    /// A registry whose every series carries `labels` (e.g. `worker="w-1"`), or, when
    /// `enabled` is false, none: every handle registered through it is a no-op.
    pub fn new(enabled: bool, labels: &[(&str, &str)]) -> Arc<Telemetry> {
        let registry = enabled.then(|| {
            let mut builder = PrometheusBuilder::new();
            for (key, value) in labels {
                builder = builder.add_global_label(*key, *value);
            }
            let recorder = builder
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &LATENCY_BUCKETS)
                .expect("the bucket list is not empty")
                .build_recorder();
            let handle = recorder.handle();
            (recorder, handle)
        });
        Arc::new(Telemetry {
            registry,
            collectors: Mutex::new(Vec::new()),
        })
    }

    /// A registry that records nothing.
    pub fn off() -> Arc<Telemetry> {
        Telemetry::new(false, &[])
    }

    pub fn enabled(&self) -> bool {
        self.registry.is_some()
    }

    /// Runs `declare` with this registry as the `metrics` recorder: the handles it creates
    /// (`metrics::counter!` and friends) and the descriptions it gives (`describe_*!`, the
    /// `# HELP` lines) belong to this registry, wherever they are used afterwards.
    pub fn register<T>(&self, declare: impl FnOnce() -> T) -> T {
        match &self.registry {
            Some((recorder, _)) => metrics::with_local_recorder(recorder as &dyn Recorder, declare),
            None => metrics::with_local_recorder(&metrics::NoopRecorder, declare),
        }
    }

    /// Calls `collect` before every scrape, to set gauges read from the component's state.
    pub fn on_scrape(&self, collect: impl Fn() + Send + Sync + 'static) {
        if self.enabled() {
            self.lock().push(Box::new(collect));
        }
    }

    /// The Prometheus text exposition of every metric, or `None` when metrics are off.
    pub fn render(&self) -> Option<String> {
        let (_, handle) = self.registry.as_ref()?;
        for collect in self.lock().iter() {
            collect();
        }
        Some(handle.render())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Collector>> {
        self.collectors
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_registry_keeps_its_own_series_and_help() {
        let a = Telemetry::new(true, &[("worker", "a")]);
        let b = Telemetry::new(true, &[("worker", "b")]);
        let counter_a = a.register(|| {
            metrics::describe_counter!("sluice_test_pushes_total", "Pushes taken.");
            metrics::counter!("sluice_test_pushes_total")
        });
        let counter_b = b.register(|| metrics::counter!("sluice_test_pushes_total"));
        counter_a.increment(3);
        counter_b.increment(5);
        let text_a = a.render().unwrap();
        let text_b = b.render().unwrap();
        assert!(
            text_a.contains("# HELP sluice_test_pushes_total Pushes taken."),
            "{text_a}"
        );
        assert!(
            text_a.contains("sluice_test_pushes_total{worker=\"a\"} 3"),
            "{text_a}"
        );
        assert!(
            text_b.contains("sluice_test_pushes_total{worker=\"b\"} 5"),
            "{text_b}"
        );
    }

    #[test]
    fn latency_histograms_have_buckets_and_collectors_run_before_a_scrape() {
        let t = Telemetry::new(true, &[]);
        let (latency, gauge) = t.register(|| {
            (
                metrics::histogram!("sluice_test_push_latency_seconds"),
                metrics::gauge!("sluice_test_memory_used_bytes"),
            )
        });
        latency.record(0.003);
        t.on_scrape(move || gauge.set(42.0));
        let text = t.render().unwrap();
        assert!(
            text.contains("sluice_test_push_latency_seconds_bucket{le=\"0.005\"} 1"),
            "{text}"
        );
        assert!(text.contains("sluice_test_memory_used_bytes 42"), "{text}");
    }

    #[test]
    fn a_disabled_registry_renders_nothing_and_its_handles_do_nothing() {
        let t = Telemetry::off();
        let counter = t.register(|| metrics::counter!("sluice_test_pushes_total"));
        counter.increment(1);
        t.on_scrape(|| panic!("no collector runs when metrics are off"));
        assert!(t.render().is_none());
    }
}
