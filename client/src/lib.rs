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
    pub workers: RpcPool,
    pub metrics: ClientMetrics,
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
        let workers = RpcPool::new(FrameLimits::default(), config.connect_timeout).with_tls(tls);
        Ok(SluiceClient {
            inner: Arc::new(Inner {
                config,
                master,
                workers,
                metrics,
            }),
        })
    }

    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
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
