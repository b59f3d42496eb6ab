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
//! - `drain`: a leaving worker's drain plan (its copies no other copy outlives, and who takes
//!   each) and the layouts re-pointed as it hands them over.
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
//!
//! TLS (`tls_grpc`, `tls_admin`, `tls_connect`): [`run_with_admin`] serves gRPC over its own
//! stream of TLS connections (tonic's own TLS cannot reload a certificate), `core`'s pool to
//! the workers and the Raft network dial with TLS.

mod admin;
mod apps;
mod auth;
mod background;
mod commit;
pub mod config;
mod core;
mod drain;
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
use sluice_protocol::tls::{TlsClient, TlsIncoming, TlsServer, ALPN_H2};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;

pub use config::MasterConfig;
pub use error::{MasterError, MasterResult};
pub use service::MasterService;

/// How long open connections may take to finish once shutdown is asked for.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// How long a peer of the gRPC port with TLS has to finish its TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The certificate the master's TLS ports present, when one has TLS on (`tls_grpc`,
/// `tls_admin`).
pub(crate) fn tls_server(config: &MasterConfig) -> MasterResult<Option<TlsServer>> {
    if !(config.tls_grpc || config.tls_admin) {
        return Ok(None);
    }
    TlsServer::load(
        &config.tls_cert_file,
        &config.tls_key_file,
        config.tls_reload_interval,
    )
    .map(Some)
    .map_err(|e| MasterError::Config(e.to_string()))
}

/// How the master dials workers and other masters with `tls_connect`; `None`: plain TCP.
pub(crate) fn tls_client(config: &MasterConfig) -> MasterResult<Option<TlsClient>> {
    if !config.tls_connect {
        return Ok(None);
    }
    TlsClient::load(
        &config.tls_ca_file,
        &config.tls_server_name,
        config.tls_reload_interval,
    )
    .map(Some)
    .map_err(|e| MasterError::Config(e.to_string()))
}

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
    let tls = tls_server(&config)?;
    let (tls_grpc, tls_admin) = (config.tls_grpc, config.tls_admin);
    let service = MasterService::start(config, addr, shutdown.clone()).await?;
    service.spawn_background(shutdown.clone());
    if let Some(admin) = admin {
        tracing::info!(addr = ?admin.local_addr().ok(), tls = tls_admin, "master admin port");
        let tls = tls.clone().filter(|_| tls_admin);
        sluice_ops::admin::spawn_with_tls(admin, service.admin_router(), tls, shutdown.clone());
    }
    tracing::info!(%addr, tls = tls_grpc, "master started");
    let router = tonic::transport::Server::builder()
        .add_service(
            MasterServer::new(service.clone())
                .max_decoding_message_size(message_limit)
                .max_encoding_message_size(message_limit),
        )
        .add_service(service.raft_server().into_service());
    let stop = shutdown.clone().cancelled_owned();
    let serve = async move {
        match tls.filter(|_| tls_grpc) {
            // TLS handshakes run in tasks of their own, so a slow peer holds up no accept.
            Some(tls) => {
                let incoming =
                    TlsIncoming::new(listener, tls.acceptor(&[ALPN_H2]), TLS_HANDSHAKE_TIMEOUT)?;
                router.serve_with_incoming_shutdown(incoming, stop).await
            }
            None => {
                let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
                router.serve_with_incoming_shutdown(incoming, stop).await
            }
        }
        .map_err(MasterError::from)
    };
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
