//! The HTTP admin port every Sluice process serves.
//!
//! - `GET /metrics`: the Prometheus text exposition of the process's [`Telemetry`]
//!   (404 when metrics are off).
//! - `GET /healthz`: 200 while the process runs (a liveness probe).
//! - `GET /readyz`: 200 when the process serves (a master: leads, or follows a known leader; a
//!   worker: registered and not decommissioning), else 503 with the reason.
//! - `GET /api/config`: the effective configuration as JSON.
//!
//! Components merge their own routes (JSON endpoints, the status page) into [`router`]'s.
//! Errors are JSON objects `{"error": "..."}` with a matching status.
//!
//! With TLS ([`spawn_with_tls`]) the port speaks HTTPS (ALPN `http/1.1`); handshakes run off the
//! accept loop, each within [`TLS_HANDSHAKE_TIMEOUT`], and the certificate is reloaded when its
//! files change (see `sluice_protocol::tls`).

use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use sluice_protocol::tls::{TlsIncoming, TlsServer, ALPN_HTTP1};
use sluice_protocol::transport::Stream;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::Telemetry;

/// Whether the process serves; `Err` says why not.
pub type Readiness = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// How long open admin connections may take to finish once shutdown is asked for.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// How long a client of an HTTPS admin port has to finish its TLS handshake.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The routes every process has.
pub fn router(telemetry: Arc<Telemetry>, ready: Readiness, config: serde_json::Value) -> Router {
    let config = Arc::new(config);
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let telemetry = telemetry.clone();
                async move { metrics(&telemetry) }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let ready = ready.clone();
                async move {
                    match ready() {
                        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
                        Err(why) => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("not ready: {why}\n"),
                        ),
                    }
                }
            }),
        )
        .route(
            "/api/config",
            get(move || {
                let config = config.clone();
                async move { Json(config.as_ref().clone()) }
            }),
        )
}

fn metrics(telemetry: &Telemetry) -> Response {
    match telemetry.render() {
        Some(text) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        None => error(StatusCode::NOT_FOUND, "metrics are off (`metrics = false`)"),
    }
}

/// A JSON error answer: `{"error": message}` with `status`.
pub fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": message.into() }))).into_response()
}

/// Binds the admin port of a config key: `None` when `addr` is empty (the port is off).
pub async fn bind(addr: &str) -> std::io::Result<Option<TcpListener>> {
    if addr.is_empty() {
        return Ok(None);
    }
    TcpListener::bind(addr).await.map(Some)
}

/// Serves `router` on `listener` until `shutdown` is cancelled, then gives open connections
/// a short grace period (a browser's keep-alive connection would otherwise hold it open).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    serve_with_tls(listener, router, None, shutdown).await
}

/// [`serve`], over HTTPS with the certificate of `tls` when given.
pub async fn serve_with_tls(
    listener: TcpListener,
    router: Router,
    tls: Option<&TlsServer>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let stop = shutdown.clone().cancelled_owned();
    let serve = async move {
        match tls {
            None => {
                axum::serve(listener, router)
                    .with_graceful_shutdown(stop)
                    .await
            }
            Some(tls) => {
                let incoming =
                    TlsIncoming::new(listener, tls.acceptor(&[ALPN_HTTP1]), TLS_HANDSHAKE_TIMEOUT)?;
                axum::serve(HttpsListener(incoming), router)
                    .with_graceful_shutdown(stop)
                    .await
            }
        }
    };
    tokio::select! {
        served = serve => served,
        _ = async {
            shutdown.cancelled().await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => Ok(()),
    }
}

/// Spawns [`serve`], logging its end if it fails.
pub fn spawn(listener: TcpListener, router: Router, shutdown: CancellationToken) {
    spawn_with_tls(listener, router, None, shutdown)
}

/// Spawns [`serve_with_tls`], logging its end if it fails.
pub fn spawn_with_tls(
    listener: TcpListener,
    router: Router,
    tls: Option<TlsServer>,
    shutdown: CancellationToken,
) {
    let addr = listener.local_addr().ok();
    tokio::spawn(async move {
        if let Err(e) = serve_with_tls(listener, router, tls.as_ref(), shutdown).await {
            tracing::error!(?addr, "admin port stopped: {e}");
        }
    });
}

/// Connections of an HTTPS admin port, their handshakes done.
struct HttpsListener(TlsIncoming);

impl axum::serve::Listener for HttpsListener {
    type Io = Stream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Stream, std::net::SocketAddr) {
        loop {
            match self.0.accept().await {
                Some(stream) => match stream.peer_addr() {
                    Ok(peer) => return (stream, peer),
                    // Closed already: take the next one.
                    Err(_) => continue,
                },
                // Accepting stopped (the runtime is going away): never hand out another.
                None => std::future::pending().await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        Ok(self.0.local_addr())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: std::net::SocketAddr, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        answer
    }

    #[tokio::test]
    async fn serves_metrics_health_readiness_and_config() {
        let telemetry = Telemetry::new(true, &[("worker", "w")]);
        let pushes = telemetry.register(|| {
            metrics::describe_counter!("sluice_test_pushes_total", "Pushes taken.");
            metrics::counter!("sluice_test_pushes_total")
        });
        pushes.increment(2);
        let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = ready.clone();
        let readiness: Readiness = Arc::new(move || {
            if flag.load(std::sync::atomic::Ordering::SeqCst) {
                Ok(())
            } else {
                Err("not registered yet".into())
            }
        });
        let listener = bind("127.0.0.1:0").await.unwrap().unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let config = serde_json::json!({ "memory_budget": "1 GiB" });
        spawn(
            listener,
            router(telemetry, readiness, config),
            shutdown.clone(),
        );

        let metrics = get(addr, "/metrics").await;
        assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
        assert!(
            metrics.contains("sluice_test_pushes_total{worker=\"w\"} 2"),
            "{metrics}"
        );
        assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
        let not_ready = get(addr, "/readyz").await;
        assert!(not_ready.starts_with("HTTP/1.1 503"), "{not_ready}");
        assert!(not_ready.contains("not registered yet"), "{not_ready}");
        ready.store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 200"));
        assert!(get(addr, "/api/config")
            .await
            .contains("\"memory_budget\":\"1 GiB\""));
        assert!(get(addr, "/nothing").await.starts_with("HTTP/1.1 404"));
        shutdown.cancel();
    }

    #[tokio::test]
    async fn metrics_off_is_a_clear_404() {
        let listener = bind("127.0.0.1:0").await.unwrap().unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let app = router(Telemetry::off(), Arc::new(|| Ok(())), serde_json::json!({}));
        spawn(listener, app, shutdown.clone());
        let answer = get(addr, "/metrics").await;
        assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
        assert!(answer.contains("metrics are off"), "{answer}");
        shutdown.cancel();
        assert!(bind("").await.unwrap().is_none());
    }
}
