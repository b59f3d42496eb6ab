//! The master's admin port: the routes every process has (`sluice_ops::admin`), with the
//! master's readiness.

use std::sync::Arc;

use axum::Router;

use crate::core::Core;

pub(crate) fn router(core: Arc<Core>) -> Router {
    let config = serde_json::to_value(&core.config).unwrap_or_default();
    let ready = {
        let core = core.clone();
        Arc::new(move || ready(&core)) as sluice_ops::admin::Readiness
    };
    sluice_ops::admin::router(core.telemetry.clone(), ready, config)
}

/// A master serves when it leads (past its read barrier) or follows a known leader, to which
/// it redirects every request.
fn ready(core: &Core) -> Result<(), String> {
    if core.leader_check().is_ok() {
        return Ok(());
    }
    match core.leader_addr() {
        Some(leader) if leader != core.addr => Ok(()),
        _ => Err("no leader is serving yet".into()),
    }
}
