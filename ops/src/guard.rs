//! Requests that change something on the admin port (`POST`: decommission) must be signed with
//! the cluster secret when the process has one; reads (`GET`: metrics, health, status) stay open
//! for probes and Prometheus.
//!
//! The signature is the `sluice-auth` header, made by
//! [`sluice_protocol::auth::sign_raw`] over `"<METHOD> <path and query>"` and the body, as
//! `sluice admin --cluster-secret-file` sends it. Only `admin` and `master:*` signers pass.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use axum::Router;
use sluice_protocol::auth::{Principal, Verifier, AUTH_METADATA};

/// Largest body of a signed admin request.
const MAX_BODY: usize = 1 << 20;

/// `router`, its mutating requests checked by `verifier` (`None`: nothing is checked).
pub fn signed_posts(router: Router, verifier: Option<Verifier>) -> Router {
    match verifier {
        Some(verifier) => router.layer(axum::middleware::from_fn_with_state(
            Arc::new(verifier),
            check,
        )),
        None => router,
    }
}

async fn check(State(verifier): State<Arc<Verifier>>, request: Request, next: Next) -> Response {
    if matches!(*request.method(), Method::GET | Method::HEAD) {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let Ok(body) = axum::body::to_bytes(body, MAX_BODY).await else {
        return crate::admin::error(StatusCode::PAYLOAD_TOO_LARGE, "request body too large");
    };
    let name = format!(
        "{} {}",
        parts.method,
        parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
    );
    let Some(value) = parts
        .headers
        .get(AUTH_METADATA)
        .and_then(|v| v.to_str().ok())
    else {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "this cluster requires authentication for changes: sign the request with the cluster \
             secret (sluice admin --cluster-secret-file)",
        );
    };
    match verifier.verify_raw(value, &name, &body) {
        Ok(Principal::Admin | Principal::Master(_)) => {
            next.run(Request::from_parts(parts, Body::from(body))).await
        }
        Ok(other) => refuse(
            StatusCode::FORBIDDEN,
            &format!("{other} may not change this process: only operators and masters may"),
        ),
        Err(e) => refuse(StatusCode::UNAUTHORIZED, &e.to_string()),
    }
}

fn refuse(status: StatusCode, message: &str) -> Response {
    tracing::warn!(%status, message, "admin request refused");
    crate::admin::error(status, message.to_string())
}
