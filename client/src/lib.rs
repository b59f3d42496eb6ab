//! The Sluice Rust client core, used by the JVM bridge, the benchmark, chaos tests and tests.
//!
//! - [`SluiceClient`]: one per process. Talks to the leading master (gRPC, through a
//!   [`MasterChannel`] over every configured master) and keeps one multiplexed connection per
//!   worker port. Registers and unregisters shuffles, heartbeats applications,
//!   and makes writers and readers.
//! - [`writer::ShuffleWriter`]: one per map attempt. Buffers records per partition, cuts them into
//!   LZ4-compressed, checksummed batches tagged `(map, attempt, batch id)`, merges batches bound
//!   for the same worker into one push, keeps a bounded number of pushes in flight, and on
//!   `finish` waits for every ack and reports the map's output to the master.
//! - [`reader::ShuffleReader`]: reads a partition range (optionally a map range): waits for the
//!   commit, streams the committed files of every epoch of each partition with bounded prefetch
//!   (retrying a failed request on the same copy, then reading another copy), verifies each
//!   batch's checksum and partition, drops losing attempts and repeated batches, decompresses,
//!   and at the end of each partition compares what it read with what the winning attempts
//!   reported.
//!
//! - [`metrics::ClientMetrics`]: counters of pushed bytes, retries, revives and data loss,
//!   bound to the recorder the embedding program gives, with totals readable in-process.
//!
//! No JNI or Spark types appear here.

mod backoff;
pub mod config;
pub mod error;
pub mod latency;
pub mod metrics;
pub mod reader;
pub mod writer;

use std::ops::Range;
use std::sync::Arc;

use sluice_protocol::frame::FrameLimits;
use sluice_protocol::pb;
use sluice_protocol::rpc::RpcPool;
use sluice_protocol::tls::TlsClient;

/// How often a client with `tls` checks its CA file for changes.
const TLS_RELOAD_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);
use sluice_protocol::{MasterChannel, MasterOptions, ShuffleKey};

pub use config::ClientConfig;
pub use error::{ClientError, ClientResult};
pub use metrics::{ClientMetrics, ClientMetricsSnapshot};
pub use reader::ShuffleReader;
pub use writer::{MapOutput, ShuffleWriter};

/// Largest gRPC message the client accepts (layouts of large partition ranges).
const MAX_MESSAGE: usize = 256 << 20;

#[derive(Debug)]
pub(crate) struct Inner {
    pub config: ClientConfig,
    /// Every master call goes through it, to whichever master leads.
    pub master: MasterChannel,
    /// Worker connections without authentication.
    workers: RpcPool,
    pub metrics: ClientMetrics,
    /// Every worker's round trips, for request timeouts and hedged reads.
    pub latency: latency::PeerLatency,
    /// The application this client authenticates as, once it registered it (see
    /// [`Inner::session`]).
    session: tokio::sync::OnceCell<Session>,
}

/// An application's authenticated session with the cluster.
#[derive(Debug)]
struct Session {
    app_id: String,
    /// Worker connections opened as `app:<app_id>`; `None`: the cluster runs without
    /// authentication and the plain connections serve.
    workers: Option<RpcPool>,
}

impl Inner {
    /// A push or fetch request to `worker` through `pool`, with the timeout its observed
    /// latency gives ([`latency`]); counts its round trip, or its timeout.
    pub async fn call_worker(
        &self,
        pool: &RpcPool,
        worker: &str,
        frame: sluice_protocol::connection::OutFrame,
        expected: sluice_protocol::frame::MessageType,
    ) -> Result<sluice_protocol::frame::Frame, sluice_protocol::ProtocolError> {
        let timeout = self.latency.timeout(
            worker,
            self.config.request_timeout_min,
            self.config.request_timeout,
        );
        let sent = std::time::Instant::now();
        let result = pool.call(worker, frame, expected, timeout).await;
        match &result {
            Ok(_) => self.latency.observe(worker, sent.elapsed()),
            Err(e) if e.code() == sluice_protocol::ErrorCode::Timeout => {
                self.latency.timed_out(worker);
                self.metrics.timeout();
            }
            Err(_) => {}
        }
        result
    }

    /// The worker connections to use for application `app_id`'s shuffles. With an application
    /// secret, the first call registers the application with the master (which binds its id to
    /// the secret's key and answers its token) and from then on signs every master call and
    /// opens every worker connection as `app:<app_id>`; a client authenticates as one
    /// application only.
    pub async fn session(&self, app_id: &str) -> ClientResult<&RpcPool> {
        let Some(secret) = &self.config.app_secret else {
            return Ok(&self.workers);
        };
        let session = self
            .session
            .get_or_try_init(|| self.register_application(secret, app_id))
            .await?;
        if session.app_id != app_id {
            return Err(ClientError::InvalidArgument(format!(
                "this client authenticates as application {}; it cannot act for application \
                 {app_id}",
                session.app_id
            )));
        }
        Ok(session.workers.as_ref().unwrap_or(&self.workers))
    }

    async fn register_application(
        &self,
        secret: &sluice_protocol::auth::Secret,
        app_id: &str,
    ) -> ClientResult<Session> {
        use sluice_protocol::auth::{app_key, verifier, Kid, Principal, PrincipalKeys, Secret};
        let request = pb::RegisterApplicationRequest {
            app_id: app_id.to_string(),
            verifier: verifier(&app_key(secret, app_id)).to_vec(),
        };
        let response = self
            .master
            .call(request, |mut master, request| async move {
                master.register_application(request).await
            })
            .await?;
        if !response.auth {
            tracing::info!(app = app_id, "the cluster runs without authentication");
            return Ok(Session {
                app_id: app_id.to_string(),
                workers: None,
            });
        }
        let kid = Kid::from_bytes(&response.kid).map_err(|e| ClientError::Master {
            addr: self.master.leader(),
            status: tonic::Status::internal(format!("the master answered a bad key id: {e}")),
        })?;
        let credentials = sluice_protocol::rpc::Credentials {
            principal: Principal::App(app_id.to_string()),
            keys: PrincipalKeys::app(kid, &Secret::new(response.token)),
        };
        self.master.set_credentials(Some(credentials.clone()));
        let workers = self.new_pool().with_credentials(Some(credentials));
        tracing::debug!(app = app_id, "application authenticated");
        Ok(Session {
            app_id: app_id.to_string(),
            workers: Some(workers),
        })
    }

    /// The worker connections of the application this client authenticated as, once
    /// [`Inner::session`] succeeded (else the plain ones).
    pub fn workers(&self) -> &RpcPool {
        self.session
            .get()
            .and_then(|session| session.workers.as_ref())
            .unwrap_or(&self.workers)
    }

    /// A pool of worker connections as this client's settings make them.
    fn new_pool(&self) -> RpcPool {
        worker_pool(&self.config, self.master.options().tls.clone())
    }
}

/// A pool of worker connections for `config`, dialed with `tls` when given.
fn worker_pool(config: &ClientConfig, tls: Option<TlsClient>) -> RpcPool {
    RpcPool::new(FrameLimits::default(), config.connect_timeout).with_tls(tls)
}

/// A shuffle's placement, as its writers need it. Shared by every writer of the shuffle in the
/// process, so a revive one writer made is used by all.
#[derive(Debug)]
pub struct ShuffleHandle {
    pub key: ShuffleKey,
    pub num_maps: u32,
    pub num_partitions: u32,
    /// The placement the shuffle was registered with (epoch 0).
    pub locations: pb::ShuffleLocations,
    routes: std::sync::Mutex<Vec<Route>>,
    /// Held while a revive is asked of the master: one at a time per shuffle in a process, and
    /// one that waited asks only for the partitions no revive moved meanwhile.
    revive_turn: tokio::sync::Mutex<()>,
}

/// Where a partition's batches go now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub epoch: u32,
    /// The primary's push address.
    pub primary: Arc<str>,
}

impl ShuffleHandle {
    fn new(
        key: ShuffleKey,
        num_maps: u32,
        num_partitions: u32,
        locations: pb::ShuffleLocations,
    ) -> ShuffleHandle {
        let addrs: Vec<Arc<str>> = locations
            .workers
            .iter()
            .map(|w| Arc::from(w.push_addr()))
            .collect();
        let routes = locations
            .primary_worker
            .iter()
            .zip(&locations.epoch)
            .map(|(worker, epoch)| Route {
                epoch: *epoch,
                primary: addrs[*worker as usize].clone(),
            })
            .collect();
        ShuffleHandle {
            key,
            num_maps,
            num_partitions,
            locations,
            routes: std::sync::Mutex::new(routes),
            revive_turn: tokio::sync::Mutex::new(()),
        }
    }

    /// The current route of partition `p` (which must be below `num_partitions`).
    pub fn route(&self, p: u32) -> Route {
        self.routes.lock().unwrap_or_else(|e| e.into_inner())[p as usize].clone()
    }

    /// Takes the locations a revive answered, keeping the newest epoch of each partition.
    fn revived(&self, locations: &[pb::RevivedLocation]) {
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        for location in locations {
            let (Some(route), Some(primary)) = (
                routes.get_mut(location.partition as usize),
                &location.primary,
            ) else {
                continue;
            };
            if location.epoch >= route.epoch {
                *route = Route {
                    epoch: location.epoch,
                    primary: Arc::from(primary.push_addr()),
                };
            }
        }
    }
}

/// The process-wide client. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SluiceClient {
    inner: Arc<Inner>,
}

impl SluiceClient {
    /// Creates a client. Master connections are made on first use, so masters that are not
    /// up yet (or restart) are not an error here; a malformed master list is. Its metrics go to
    /// the global `metrics` recorder, if any (their totals are readable either way).
    pub fn new(config: ClientConfig) -> ClientResult<SluiceClient> {
        SluiceClient::with_metrics(config, ClientMetrics::new())
    }

    /// [`SluiceClient::new`], counting into `metrics` (made in the embedding program's registry).
    pub fn with_metrics(
        config: ClientConfig,
        metrics: ClientMetrics,
    ) -> ClientResult<SluiceClient> {
        // With `tls`, the masters and the workers are dialed with TLS; the CA file is checked
        // for changes as often as servers check theirs by default.
        let tls = if config.tls {
            let tls = TlsClient::load(
                &config.tls_ca_file,
                &config.tls_server_name,
                TLS_RELOAD_INTERVAL,
            )
            .map_err(|e| ClientError::InvalidArgument(e.to_string()))?;
            Some(tls)
        } else {
            None
        };
        let options = MasterOptions {
            connect_timeout: config.connect_timeout,
            call_timeout: config.master_request_timeout,
            retry_timeout: config.master_retry_timeout,
            max_message_size: MAX_MESSAGE,
            tls: tls.clone(),
        };
        let master = MasterChannel::new(&config.master, options)
            .map_err(|e| ClientError::InvalidArgument(e.to_string()))?;
        let workers = worker_pool(&config, tls.clone());
        Ok(SluiceClient {
            inner: Arc::new(Inner {
                config,
                master,
                workers,
                metrics,
                latency: latency::PeerLatency::default(),
                session: tokio::sync::OnceCell::new(),
            }),
        })
    }

    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// Signs master calls as the cluster's operator (`admin`) with the cluster secrets in
    /// `keyring`: for tools that ask the master about the cluster (`sluice local`, `sluice
    /// admin`), never for an application's shuffles.
    pub fn as_operator(self, keyring: &sluice_protocol::auth::Keyring) -> SluiceClient {
        self.inner
            .master
            .set_credentials(Some(sluice_protocol::rpc::Credentials::cluster(
                sluice_protocol::auth::Principal::Admin,
                keyring,
            )));
        self
    }

    /// The client's metrics (see [`ClientMetrics::snapshot`] for its totals).
    pub fn metrics(&self) -> &ClientMetrics {
        &self.inner.metrics
    }

    /// Registers a shuffle (idempotent) and returns where its partitions go.
    pub async fn register_shuffle(
        &self,
        key: &ShuffleKey,
        num_maps: u32,
        num_partitions: u32,
    ) -> ClientResult<Arc<ShuffleHandle>> {
        self.inner.session(&key.app_id).await?;
        let request = pb::RegisterShuffleRequest {
            shuffle: Some(key.to_pb()),
            num_maps,
            num_partitions,
            replication: self.inner.config.replication,
        };
        let response = self
            .inner
            .master
            .call(request, |mut master, request| async move {
                master.register_shuffle(request).await
            })
            .await?;
        let locations = response.locations.unwrap_or_default();
        let n = num_partitions as usize;
        let valid = locations.primary_worker.len() == n
            && locations.epoch.len() == n
            && locations
                .primary_worker
                .iter()
                .all(|w| (*w as usize) < locations.workers.len());
        if !valid {
            return Err(ClientError::Master {
                addr: self.inner.master.leader(),
                status: tonic::Status::internal("master answered an inconsistent placement"),
            });
        }
        Ok(Arc::new(ShuffleHandle::new(
            key.clone(),
            num_maps,
            num_partitions,
            locations,
        )))
    }

    /// Deletes a shuffle on the master and its workers.
    pub async fn unregister_shuffle(&self, key: &ShuffleKey) -> ClientResult<()> {
        self.inner.session(&key.app_id).await?;
        let request = pb::UnregisterShuffleRequest {
            shuffle: Some(key.to_pb()),
        };
        self.inner
            .master
            .call(request, |mut master, request| async move {
                master.unregister_shuffle(request).await
            })
            .await?;
        Ok(())
    }

    /// Tells the master the application is alive (its data is kept).
    pub async fn app_heartbeat(&self, app_id: &str) -> ClientResult<()> {
        self.inner.session(app_id).await?;
        let request = pb::AppHeartbeatRequest {
            app_id: app_id.to_string(),
        };
        self.inner
            .master
            .call(request, |mut master, request| async move {
                master.app_heartbeat(request).await
            })
            .await?;
        Ok(())
    }

    pub async fn cluster_status(&self) -> ClientResult<pb::ClusterStatusResponse> {
        Ok(self
            .inner
            .master
            .call(
                pb::ClusterStatusRequest {},
                |mut master, request| async move { master.cluster_status(request).await },
            )
            .await?)
    }

    /// A writer for one attempt of one map.
    pub fn writer(
        &self,
        handle: Arc<ShuffleHandle>,
        map_id: u32,
        attempt: u32,
    ) -> ClientResult<ShuffleWriter> {
        ShuffleWriter::new(self.inner.clone(), handle, map_id, attempt)
    }

    /// A reader of partitions `partitions` and, when given, only maps `maps` (`[start, end)`).
    /// Waits for the shuffle's commit.
    pub async fn reader(
        &self,
        key: &ShuffleKey,
        partitions: Range<u32>,
        maps: Option<Range<u32>>,
    ) -> ClientResult<ShuffleReader> {
        ShuffleReader::open(self.inner.clone(), key.clone(), partitions, maps).await
    }
}
