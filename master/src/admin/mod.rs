//! The master's admin port: the routes every process has (`sluice_ops::admin`), with the
//! master's readiness, its status page and its JSON API.
//!
//! - `GET /`: the status page, one self-contained HTML file that polls the JSON below.
//! - `GET /api/status`: this master, the leader, the term, and counts.
//! - `GET /api/workers`: `{"workers": [...]}`, every worker with its state, disks, memory,
//!   throughput and heartbeat age.
//! - `GET /api/shuffles?limit=N`: `{"total": n, "shuffles": [...]}`, running ones first
//!   (at most `N`, default 1000).
//! - `GET /api/apps`: `{"apps": [...]}`.
//! - `GET /api/events?after=SEQ`: `{"events": [...]}`, newest first.
//! - `POST /api/workers/{id}/decommission`: no new partitions for the worker; its next
//!   heartbeat's answer tells it. 404 for an unknown worker.
//!
//! Only the leader's view is complete: any other master answers the `/api/*` routes above with
//! 503 `{"error": "...not the leader...", "leader": "<grpc addr or null>"}`.

mod views;

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use crate::core::Core;
use crate::error::MasterError;
use crate::events::Kind;

/// The status page.
const STATUS_PAGE: &str = include_str!("status.html");

/// Shuffles `/api/shuffles` lists unless asked for another number.
const DEFAULT_SHUFFLE_LIMIT: usize = 1000;

pub(crate) fn router(core: Arc<Core>) -> Router {
    let config = serde_json::to_value(&core.config).unwrap_or_default();
    let ready = {
        let core = core.clone();
        Arc::new(move || ready(&core)) as sluice_ops::admin::Readiness
    };
    let own = Router::new()
        .route("/", get(page))
        .route("/api/status", get(status))
        .route("/api/workers", get(workers))
        .route("/api/shuffles", get(shuffles))
        .route("/api/apps", get(apps))
        .route("/api/events", get(events))
        .route("/api/workers/{id}/decommission", post(decommission))
        .with_state(core.clone());
    let router = sluice_ops::admin::router(core.telemetry.clone(), ready, config).merge(own);
    sluice_ops::guard::signed_posts(router, core.verifier.clone())
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

/// The 503 answer, unless this master leads and serves.
fn not_leading(core: &Core) -> Option<Response> {
    let e = core.leader_check().err()?;
    let leader = match &e {
        MasterError::NotLeader { leader, .. } => leader.clone(),
        _ => None,
    };
    let body = serde_json::json!({ "error": e.to_string(), "leader": leader });
    Some((StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response())
}

async fn page() -> Response {
    ([(header::CACHE_CONTROL, "no-cache")], Html(STATUS_PAGE)).into_response()
}

async fn status(State(core): State<Arc<Core>>) -> Response {
    if let Some(answer) = not_leading(&core) {
        return answer;
    }
    Json(views::status(&core)).into_response()
}

async fn workers(State(core): State<Arc<Core>>) -> Response {
    if let Some(answer) = not_leading(&core) {
        return answer;
    }
    let workers = views::workers(&core);
    Json(serde_json::json!({ "workers": workers })).into_response()
}

#[derive(Debug, Deserialize)]
struct ShufflesQuery {
    limit: Option<usize>,
}

async fn shuffles(State(core): State<Arc<Core>>, Query(query): Query<ShufflesQuery>) -> Response {
    if let Some(answer) = not_leading(&core) {
        return answer;
    }
    let limit = query.limit.unwrap_or(DEFAULT_SHUFFLE_LIMIT);
    Json(views::shuffles(&core, limit)).into_response()
}

async fn apps(State(core): State<Arc<Core>>) -> Response {
    if let Some(answer) = not_leading(&core) {
        return answer;
    }
    let apps = views::apps(&core);
    Json(serde_json::json!({ "apps": apps })).into_response()
}

#[derive(Debug, Deserialize)]
struct EventsQuery {
    after: Option<u64>,
}

async fn events(State(core): State<Arc<Core>>, Query(query): Query<EventsQuery>) -> Response {
    if let Some(answer) = not_leading(&core) {
        return answer;
    }
    let events = core.events.since(query.after);
    Json(serde_json::json!({ "events": events })).into_response()
}

#[derive(Debug, Deserialize)]
struct DecommissionQuery {
    /// `30s`, `1h`: hand over what the worker holds within this, then exit.
    deadline: Option<String>,
}

/// Marks worker `id` as decommissioning on this (leading) master: placement skips it at once,
/// and the answer to its next heartbeat tells it (it then reports the state to every master).
/// With `?deadline=30s` the worker also drains: it hands what it holds over within the
/// deadline, then exits.
async fn decommission(
    State(core): State<Arc<Core>>,
    Path(id): Path<String>,
    Query(query): Query<DecommissionQuery>,
) -> Response {
    if let Some(answer) = not_leading(&core) {
        return answer;
    }
    let deadline = match query.deadline.as_deref().map(humantime::parse_duration) {
        None => None,
        Some(Ok(d)) if d > std::time::Duration::ZERO => Some(d),
        Some(Ok(_)) => None,
        Some(Err(e)) => {
            return sluice_ops::admin::error(
                StatusCode::BAD_REQUEST,
                format!("deadline: {e} (write it as 30s, 5m or 1h)"),
            )
        }
    };
    let found = {
        let mut state = core.lock();
        state.workers.get_mut(&id).map(|worker| {
            let was_leaving = worker.decommissioning();
            worker.decommission_requested = true;
            if let Some(deadline) = deadline {
                worker.drain_deadline = Some(std::time::Instant::now() + deadline);
            }
            (was_leaving, worker.state_name())
        })
    };
    let Some((was_leaving, state)) = found else {
        return sluice_ops::admin::error(StatusCode::NOT_FOUND, format!("unknown worker {id}"));
    };
    if !was_leaving {
        tracing::warn!(worker = %id, "decommissioning asked on the admin port: no new partitions for it");
        core.events.worker(
            Kind::WorkerDecommissioning,
            &id,
            format!("worker {id} decommissioning, asked on the master's admin port"),
        );
    }
    let deadline = deadline.map(|d| humantime::format_duration(d).to_string());
    Json(serde_json::json!({
        "id": id,
        "state": state,
        "changed": !was_leaving || deadline.is_some(),
        "drain_deadline": deadline,
    }))
    .into_response()
}
