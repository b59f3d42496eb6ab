//! Master configuration. Every key is documented where it is declared; unknown keys are errors.

use std::path::PathBuf;
use std::time::Duration;

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MasterConfig {
    /// Address the gRPC server binds to.
    pub listen: String,
    /// Address the HTTP admin port binds to: the status page (`/`), `/metrics`, `/healthz`,
    /// `/readyz` and the JSON API that `sluice admin` uses. Empty: no admin port.
    pub admin_listen: String,
    /// Record metrics (served on the admin port's `/metrics`). Off, every metric handle is a
    /// no-op.
    pub metrics: bool,
    /// Where the Raft log and snapshots live: every shuffle survives a restart of the master.
    pub data_dir: PathBuf,
    /// The masters of the cluster, by id: `peers[i]` is the `host:port` of master `i`. Empty:
    /// one master with no peers (id 0). On Kubernetes, `sluice-master-<i>.<service>:9097`.
    pub peers: Vec<String>,
    /// This master's id, an index into `peers`. `"auto"`: the trailing number of the host name
    /// (`sluice-master-2` is 2, as a StatefulSet names its pods), else the position of
    /// `advertise` in `peers`.
    #[serde(with = "auto_id")]
    pub id: Option<u64>,
    /// The `host:port` other masters, workers and clients reach this master at. Empty:
    /// `peers[id]`, or `listen` for a master with no peers.
    pub advertise: String,
    /// How often the leader sends Raft heartbeats to the other masters.
    #[serde(with = "sluice_protocol::duration")]
    pub raft_heartbeat_interval: Duration,
    /// A follower that hears no leader for its lease (twice this) and then a random time
    /// between this and twice this starts an election: it bounds how long a dead leader stops
    /// writes (1.2 to 1.6 s at 400 ms, plus one vote round).
    #[serde(with = "sluice_protocol::duration")]
    pub election_timeout: Duration,
    /// Log entries applied between snapshots; older entries are then dropped from the log.
    pub snapshot_every: u64,
    /// A shuffle a worker reports holding that the leading master has not known of for this
    /// long is deleted on that worker (the orphan of a lost driver or of a missed delete).
    #[serde(with = "sluice_protocol::duration")]
    pub orphan_grace: Duration,
    /// A worker silent for this long is lost: it gets no new partitions, its pending commits
    /// count as failed. (Placement already skips a worker that missed two heartbeats.)
    #[serde(with = "sluice_protocol::duration")]
    pub worker_timeout: Duration,
    /// An application with no heartbeat for this long is expired and its data deleted.
    #[serde(with = "sluice_protocol::duration")]
    pub app_timeout: Duration,
    /// Limit for one call into a worker that is not a reservation or a commit (deletes).
    #[serde(with = "sluice_protocol::duration")]
    pub worker_rpc_timeout: Duration,
    /// Limit for a worker to reserve one frame of locations. A worker that does not answer in
    /// time is left out: its partitions are placed on other workers, and it gets no new
    /// partitions for `worker_timeout`.
    #[serde(with = "sluice_protocol::duration")]
    pub reserve_timeout: Duration,
    /// Limit for a worker to commit one frame of locations.
    #[serde(with = "sluice_protocol::duration")]
    pub commit_timeout: Duration,
    /// Most locations in one `Reserve` or `Commit` frame to a worker; larger sets are sent in
    /// several frames. 16,384 keeps a frame's header at a few MiB, far below the workers' 16 MiB
    /// header limit, however long the worker names.
    pub max_locations_per_frame: u32,
    /// Largest gRPC message the master reads or writes. 128 MiB holds a layout page of 1M
    /// partitions with two copies each; a layout request whose answer would be larger is
    /// refused (ask for fewer partitions at a time).
    pub max_message_size: ByteSize,
    /// Most maps one shuffle may have.
    pub max_maps_per_shuffle: u32,
    /// Most partitions one shuffle may have.
    pub max_partitions_per_shuffle: u32,
    /// Most epochs (the first placement and its revives) one partition may have. A revive past
    /// it is refused: the writer fails instead of moving the partition forever.
    pub max_epochs_per_partition: u32,
    /// Most registered (not yet unregistered or expired) shuffles of one application.
    pub max_live_shuffles_per_app: u32,
    /// Most registered shuffles in the whole cluster.
    pub max_live_shuffles: u32,
    /// Most partitions over the registered shuffles of one application.
    pub max_live_partitions_per_app: u64,
    /// Most partitions over every registered shuffle. The master keeps a few hundred bytes per
    /// partition, so this bounds its memory.
    pub max_live_partitions: u64,
    /// Path of the cluster secret file (one secret of at least 32 bytes per line; the first
    /// signs, every one verifies). Set, the master opens its connections to workers' push ports
    /// with the `Hello`/`Welcome` handshake as `master:<raft id>` and tags every frame; the
    /// workers must hold the same file. Empty: no authentication (frames as before).
    pub cluster_secret_file: String,
    /// A signed gRPC request whose timestamp is further than this from the master's clock is
    /// refused (with a message that names clock skew); requests seen within this window are
    /// remembered, so a replayed one is refused.
    #[serde(with = "sluice_protocol::duration")]
    pub auth_clock_skew: Duration,
    /// Most registered applications (each holds a key verifier). A new one past it is refused
    /// `ResourceExhausted`.
    pub max_apps: u32,
    /// Requests of one application the master works on at once; more are refused
    /// `ResourceExhausted` (retryable), so one application's storm cannot starve the others.
    pub max_inflight_requests_per_app: u32,
    /// PEM certificate chain the master presents on its ports with TLS on (`tls_grpc`,
    /// `tls_admin`).
    pub tls_cert_file: String,
    /// PEM private key of `tls_cert_file`.
    pub tls_key_file: String,
    /// PEM certificates of the CAs the master trusts when it dials workers and other masters
    /// with `tls_connect`.
    pub tls_ca_file: String,
    /// Name the master expects in the certificates of the peers it dials. Empty: the dialed host.
    pub tls_server_name: String,
    /// How often the certificate, key and CA files are checked for changes (cert-manager
    /// rotates them); new connections use the new files, open ones keep theirs.
    #[serde(with = "sluice_protocol::duration")]
    pub tls_reload_interval: Duration,
    /// TLS on the gRPC port (clients, workers and other masters must dial it with TLS).
    pub tls_grpc: bool,
    /// TLS (HTTPS) on the admin port.
    pub tls_admin: bool,
    /// Dial workers' push ports and other masters with TLS (set when their ports have it on).
    pub tls_connect: bool,
}

impl Default for MasterConfig {
    fn default() -> Self {
        MasterConfig {
            listen: "0.0.0.0:9097".into(),
            admin_listen: "0.0.0.0:9095".into(),
            metrics: true,
            data_dir: PathBuf::from("/var/lib/sluice/master"),
            peers: Vec::new(),
            id: None,
            advertise: String::new(),
            raft_heartbeat_interval: Duration::from_millis(100),
            election_timeout: Duration::from_millis(400),
            snapshot_every: 10_000,
            orphan_grace: Duration::from_secs(120),
            worker_timeout: Duration::from_secs(30),
            app_timeout: Duration::from_secs(300),
            worker_rpc_timeout: Duration::from_secs(30),
            reserve_timeout: Duration::from_secs(5),
            commit_timeout: Duration::from_secs(600),
            max_locations_per_frame: 16_384,
            max_message_size: ByteSize::mib(128),
            max_maps_per_shuffle: 1_000_000,
            max_partitions_per_shuffle: 1_000_000,
            max_epochs_per_partition: 64,
            max_live_shuffles_per_app: 10_000,
            max_live_shuffles: 100_000,
            max_live_partitions_per_app: 10_000_000,
            max_live_partitions: 20_000_000,
            cluster_secret_file: String::new(),
            auth_clock_skew: Duration::from_secs(60),
            max_apps: 10_000,
            max_inflight_requests_per_app: 64,
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
            tls_ca_file: String::new(),
            tls_server_name: String::new(),
            tls_reload_interval: Duration::from_secs(10),
            tls_grpc: false,
            tls_admin: false,
            tls_connect: false,
        }
    }
}

impl MasterConfig {
    /// Checks the values that types alone cannot.
    pub fn validate(&self) -> Result<(), String> {
        for (key, value) in [
            ("worker_timeout", self.worker_timeout),
            ("app_timeout", self.app_timeout),
            ("worker_rpc_timeout", self.worker_rpc_timeout),
            ("reserve_timeout", self.reserve_timeout),
            ("commit_timeout", self.commit_timeout),
            ("raft_heartbeat_interval", self.raft_heartbeat_interval),
            ("election_timeout", self.election_timeout),
            ("orphan_grace", self.orphan_grace),
            ("auth_clock_skew", self.auth_clock_skew),
            ("tls_reload_interval", self.tls_reload_interval),
        ] {
            if value.is_zero() {
                return Err(format!("{key}: must be above 0"));
            }
        }
        for (key, value) in [
            (
                "max_locations_per_frame",
                u64::from(self.max_locations_per_frame),
            ),
            ("max_maps_per_shuffle", u64::from(self.max_maps_per_shuffle)),
            (
                "max_partitions_per_shuffle",
                u64::from(self.max_partitions_per_shuffle),
            ),
            (
                "max_epochs_per_partition",
                u64::from(self.max_epochs_per_partition),
            ),
            (
                "max_live_shuffles_per_app",
                u64::from(self.max_live_shuffles_per_app),
            ),
            ("max_live_shuffles", u64::from(self.max_live_shuffles)),
            (
                "max_live_partitions_per_app",
                self.max_live_partitions_per_app,
            ),
            ("max_live_partitions", self.max_live_partitions),
            ("max_apps", u64::from(self.max_apps)),
            (
                "max_inflight_requests_per_app",
                u64::from(self.max_inflight_requests_per_app),
            ),
        ] {
            if value == 0 {
                return Err(format!("{key}: must be above 0"));
            }
        }
        if self.raft_heartbeat_interval * 3 > self.election_timeout {
            return Err(format!(
                "election_timeout ({:?}) must be at least three raft_heartbeat_interval ({:?}): \
                 followers would start elections while the leader is alive",
                self.election_timeout, self.raft_heartbeat_interval
            ));
        }
        if self.snapshot_every == 0 {
            return Err("snapshot_every: must be above 0".into());
        }
        if let Some(id) = self.id {
            if !self.peers.is_empty() && id >= self.peers.len() as u64 {
                return Err(format!(
                    "id {id} names no master: peers lists {} (ids 0 to {})",
                    self.peers.len(),
                    self.peers.len() - 1
                ));
            }
        }
        if self.max_locations_per_frame > 100_000 {
            return Err("max_locations_per_frame: at most 100000 fit a frame header".into());
        }
        sluice_protocol::config_check::tls(
            self.tls_grpc || self.tls_admin,
            &self.tls_cert_file,
            &self.tls_key_file,
            self.tls_connect,
            &self.tls_ca_file,
        )?;
        let message = self.max_message_size.as_u64();
        if !(MIN_MESSAGE..=MAX_MESSAGE).contains(&message) {
            return Err(format!(
                "max_message_size: must be {} to {}",
                ByteSize(MIN_MESSAGE),
                ByteSize(MAX_MESSAGE)
            ));
        }
        Ok(())
    }

    /// `max_message_size` in bytes.
    pub fn message_limit(&self) -> usize {
        self.max_message_size.as_u64() as usize
    }
}

/// Bounds of `max_message_size`: below 64 KiB even small layouts would not fit; above 1 GiB one
/// answer could take the master's memory.
const MIN_MESSAGE: u64 = 64 << 10;
const MAX_MESSAGE: u64 = 1 << 30;

/// `id` as a number, or `"auto"` when unset (so flags and environment variables can set it).
mod auto_id {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(id: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        match id {
            Some(id) => s.serialize_u64(*id),
            None => s.serialize_str("auto"),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Id {
            Number(u64),
            Text(String),
        }
        match Id::deserialize(d)? {
            Id::Number(n) => Ok(Some(n)),
            Id::Text(t) if t == "auto" => Ok(None),
            Id::Text(t) => t.parse().map(Some).map_err(|_| {
                serde::de::Error::custom(format!("id: {t:?} is neither a number nor \"auto\""))
            }),
        }
    }
}
