//! The Sluice master: worker membership, partition placement, the shuffle registry and commit
//! coordination.
//!
//! - [`service`]: the `Master` gRPC service, a thin adapter. Workers register and heartbeat;
//!   writers register shuffles and report map ends; readers ask for layouts.
//! - `reserve`: placing partitions ([`placement`] decides where) and reserving them on the
//!   workers before a registration or revive is answered. No lock is held across a call to a
//!   worker: concurrent calls for the same shuffle wait for each other through marks in the
//!   state, calls for other shuffles go ahead.
//! - `commit`: when the last map ends, every worker holding the shuffle commits its copies;
//!   layout requests wait for the result.
//! - `core`: the configuration, the state, and the master's client for its calls into workers
//!   over their push port (`Reserve`, `Commit` in pages of bounded size, `Destroy`), each
//!   bounded by a timeout.
//! - `background`: tickers that declare silent workers lost and delete expired applications'
//!   data.
//! - `admin`: the admin port's routes: the status page and its JSON (`/api/*`), built from
//!   plain snapshots of the state; `events`: the ring of recent events it shows.
//! - [`state`]: the registry itself, plain data under one lock, and the limits that keep it
//!   bounded (see [`config`]).
//!
//! Calls flow one way: `service` -> `reserve` / `commit` / `background` -> `core` -> `state`.
//!
//! - [`raft`]: the replicated log. The state's replicated half (shuffles: placements and every
//!   epoch, map ends, commit results) changes only by commands applied from it, on every
//!   master; worker membership and application heartbeats are each master's own soft state.
//! - `membership`: the masters themselves (status, adding and removing masters).
//!
//! Only the leader serves requests; the others answer with its address.

mod admin;
mod apps;
mod auth;
mod background;
mod commit;
pub mod config;
mod core;
pub mod error;
mod events;
mod membership;
mod metrics;
pub mod placement;
pub mod raft;
mod reserve;
pub mod service;
pub mod state;

use sluice_protocol::pb::master_server::MasterServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;

pub use config::MasterConfig;
pub use error::{MasterError, MasterResult};
pub use service::MasterService;

/// How long open connections may take to finish once shutdown is asked for.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// Serves the master on an already bound listener until `shutdown` is cancelled, with no
/// admin port.
pub async fn run(
    config: MasterConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> MasterResult<()> {
    run_with_admin(config, listener, None, shutdown).await
}

/// Serves the master on an already bound gRPC listener, and its admin port (status page,
/// metrics, health, JSON API) on `admin` when given, until `shutdown` is cancelled.
pub async fn run_with_admin(
    config: MasterConfig,
    listener: TcpListener,
    admin: Option<TcpListener>,
    shutdown: CancellationToken,
) -> MasterResult<()> {
    config.validate().map_err(MasterError::Config)?;
    let addr = listener.local_addr()?;
    let message_limit = config.message_limit();
    let service = MasterService::start(config, addr, shutdown.clone()).await?;
    service.spawn_background(shutdown.clone());
    if let Some(admin) = admin {
        tracing::info!(addr = ?admin.local_addr().ok(), "master admin port");
        sluice_ops::admin::spawn(admin, service.admin_router(), shutdown.clone());
    }
    tracing::info!(%addr, "master started");
    let serve = tonic::transport::Server::builder()
        .add_service(
            MasterServer::new(service.clone())
                .max_decoding_message_size(message_limit)
                .max_encoding_message_size(message_limit),
        )
        .add_service(service.raft_server().into_service())
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown.clone().cancelled_owned(),
        );
    // Graceful shutdown waits for every connection to close, and a connection that never
    // finished its HTTP/2 handshake never does: give connections a grace period, then stop.
    tokio::select! {
        served = serve => served?,
        _ = async {
            shutdown.cancelled().await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => tracing::warn!(%addr, grace = ?SHUTDOWN_GRACE, "connections still open after the grace period, closing them"),
    }
    service.stop().await;
    tracing::info!(%addr, "master stopped");
    Ok(())
}
