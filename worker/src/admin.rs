//! The worker's admin port: the routes every process has (`sluice_ops::admin`), with the
//! worker's readiness.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::Router;

use crate::shared::Shared;

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    let config = serde_json::to_value(&shared.config).unwrap_or_default();
    let ready = {
        let shared = shared.clone();
        Arc::new(move || ready(&shared)) as sluice_ops::admin::Readiness
    };
    sluice_ops::admin::router(shared.telemetry.clone(), ready, config)
}

/// Ready: a master accepted the registration and the worker is not leaving.
fn ready(shared: &Shared) -> Result<(), String> {
    if shared.decommissioning.load(Ordering::Relaxed) {
        return Err("decommissioning".into());
    }
    if !*shared.registered.borrow() {
        return Err("no master has accepted the registration yet".into());
    }
    Ok(())
}
