//! What every Sluice process offers its operators: a metrics registry of its own
//! ([`Telemetry`]) and the HTTP admin port ([`admin`]) that serves `/metrics`, `/healthz`,
//! `/readyz`, `/api/config` and whatever JSON and pages the process adds.
//!
//! Each component (a master, a worker, a client) owns one [`Telemetry`]: processes that run
//! several components (`sluice local`, tests) keep their figures apart, and each admin port
//! shows only its own. Metrics are declared once per crate, in its `metrics.rs`, as a struct of
//! handles registered through [`Telemetry::register`]; the hot path only bumps an atomic.

pub mod admin;
pub mod guard;
mod telemetry;

pub use telemetry::{Telemetry, LATENCY_BUCKETS};
