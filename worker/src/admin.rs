//! The worker's admin port: the routes every process has (`sluice_ops::admin`), with the
//! worker's readiness, and its own JSON:
//!
//! - `GET /api/status`: id, addresses, state, memory, disks, partitions and traffic totals.
//! - `POST /api/decommission`: the worker takes no new partitions from now on (the masters
//!   learn it from its next heartbeat) and `/readyz` answers 503; it keeps serving what it
//!   holds. A Kubernetes preStop hook calls it (`sluice admin decommission --worker ADDR`).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;

use crate::shared::Shared;

/// How far a signed admin request's time may be from this worker's clock.
const ADMIN_CLOCK_SKEW: std::time::Duration = std::time::Duration::from_secs(60);

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    let config = serde_json::to_value(&shared.config).unwrap_or_default();
    let ready = {
        let shared = shared.clone();
        Arc::new(move || ready(&shared)) as sluice_ops::admin::Readiness
    };
    let own = Router::new()
        .route("/api/status", get(status))
        .route("/api/decommission", post(decommission))
        .with_state(shared.clone());
    let router = sluice_ops::admin::router(shared.telemetry.clone(), ready, config).merge(own);
    let verifier = shared
        .keyring
        .clone()
        .map(|keyring| sluice_protocol::auth::Verifier::new(keyring, ADMIN_CLOCK_SKEW));
    sluice_ops::guard::signed_posts(router, verifier)
}

/// Ready: a master accepted the registration and the worker is not leaving.
fn ready(shared: &Shared) -> Result<(), String> {
    if shared.is_decommissioning() {
        return Err("decommissioning".into());
    }
    if !*shared.registered.borrow() {
        return Err("no master has accepted the registration yet".into());
    }
    Ok(())
}

/// `GET /api/status`.
#[derive(Debug, Serialize)]
struct Status {
    id: String,
    host: String,
    push_port: u32,
    fetch_port: u32,
    admin_port: u32,
    node: String,
    zone: String,
    /// `active` or `decommissioning`.
    state: &'static str,
    /// Whether a master accepted the registration.
    registered: bool,
    /// A drain (decommission with a deadline, or SIGTERM) is under way or done.
    draining: bool,
    /// What the drain did, once it ended.
    drain: Option<crate::drain::DrainReport>,
    memory: Memory,
    disks: Vec<Disk>,
    /// Partition locations held (reserved, buffered, flushed or committed).
    partitions: u64,
    /// Shuffles with locations here.
    shuffles: u64,
    traffic: Traffic,
}

#[derive(Debug, Serialize)]
struct Memory {
    used_bytes: u64,
    budget_bytes: u64,
}

#[derive(Debug, Serialize)]
struct Disk {
    path: String,
    capacity_bytes: u64,
    free_bytes: u64,
    /// Of the whole file system (capacity minus free).
    used_bytes: u64,
    healthy: bool,
}

/// Totals since the worker started.
#[derive(Debug, Serialize)]
struct Traffic {
    pushed_bytes: u64,
    fetched_bytes: u64,
}

async fn status(State(shared): State<Arc<Shared>>) -> Json<Status> {
    let (shuffles, partitions) = shared.store.counts();
    // Space as of the last heartbeat's statvfs: a hung disk cannot hang the page.
    let disks = shared
        .store
        .disks()
        .iter()
        .map(|disk| {
            let usage = disk.usage();
            Disk {
                path: disk.path.display().to_string(),
                capacity_bytes: usage.capacity_bytes,
                free_bytes: usage.free_bytes,
                used_bytes: usage.capacity_bytes.saturating_sub(usage.free_bytes),
                healthy: usage.space_answered && disk.is_healthy(),
            }
        })
        .collect();
    let info = &shared.info;
    let traffic = &shared.metrics.traffic;
    Json(Status {
        id: info.id.clone(),
        host: info.host.clone(),
        push_port: info.push_port,
        fetch_port: info.fetch_port,
        admin_port: info.admin_port,
        node: info.node.clone(),
        zone: info.zone.clone(),
        state: match shared.is_decommissioning() {
            true => "decommissioning",
            false => "active",
        },
        registered: *shared.registered.borrow(),
        draining: shared.draining.load(Ordering::SeqCst),
        drain: shared
            .drain_report
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone(),
        memory: Memory {
            used_bytes: shared.store.memory().used(),
            budget_bytes: shared.store.memory().budget(),
        },
        disks,
        partitions,
        shuffles,
        traffic: Traffic {
            pushed_bytes: traffic.pushed.load(Ordering::Relaxed),
            fetched_bytes: traffic.fetched.load(Ordering::Relaxed),
        },
    })
}

#[derive(Debug, serde::Deserialize)]
pub(crate) struct DecommissionQuery {
    /// `30s`, `1h`: drain within this (hand over what no other copy outlives), then exit.
    deadline: Option<String>,
}

/// `POST /api/decommission[?deadline=30s]`: idempotent; says whether this call started it.
/// With a deadline the worker drains, then exits.
async fn decommission(
    State(shared): State<Arc<Shared>>,
    axum::extract::Query(query): axum::extract::Query<DecommissionQuery>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let deadline = match query.deadline.as_deref().map(humantime::parse_duration) {
        None => None,
        Some(Ok(d)) => Some(d),
        Some(Err(e)) => {
            return sluice_ops::admin::error(
                axum::http::StatusCode::BAD_REQUEST,
                format!("deadline: {e} (write it as 30s, 5m or 1h)"),
            )
        }
    };
    let started = shared.decommission("the admin port");
    let draining = shared.draining.load(Ordering::SeqCst);
    if let Some(deadline) = deadline.filter(|d| !d.is_zero()) {
        shared.start_drain(deadline, "the admin port");
    }
    Json(serde_json::json!({
        "id": shared.info.id,
        "state": "decommissioning",
        "changed": started || (deadline.is_some() && !draining),
        "drain_deadline": deadline.map(|d| humantime::format_duration(d).to_string()),
    }))
    .into_response()
}
