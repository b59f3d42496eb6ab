//! Worker configuration. Every key is documented where it is declared; unknown keys are errors.

use std::path::PathBuf;
use std::time::Duration;

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};
use sluice_protocol::pb;

use crate::storage::engine::EngineChoice;

/// Which disk write engine to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IoEngineConfig {
    /// io_uring where the kernel allows it, else positional writes.
    #[default]
    Auto,
    /// io_uring, or refuse to start.
    IoUring,
    /// Positional writes from a thread per disk.
    Sync,
}

impl From<IoEngineConfig> for EngineChoice {
    fn from(value: IoEngineConfig) -> Self {
        match value {
            IoEngineConfig::Auto => EngineChoice::Auto,
            IoEngineConfig::IoUring => EngineChoice::Uring,
            IoEngineConfig::Sync => EngineChoice::Sync,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    /// Stable worker id (a StatefulSet pod name). Empty: `<machine host name>-<push port>`, so
    /// workers left on defaults on different machines do not share an id. The master refuses
    /// an id that a live worker at another address holds.
    pub id: String,
    /// The masters' gRPC addresses: one `host:port`, several separated by commas
    /// (`"m1:9097,m2:9097,m3:9097"`), or in a file a list (`["m1:9097", "m2:9097"]`). The worker
    /// registers and heartbeats with every one of them, so whichever leads knows it.
    #[serde(deserialize_with = "endpoint_list")]
    pub master: String,
    /// Host name or address that clients and the master use to reach this worker.
    pub host: String,
    /// The machine (Kubernetes node) this worker runs on; the master never puts both copies of
    /// a partition on one node when another is available. On Kubernetes fill it from the
    /// downward API: `env: [{name: SLUICE_WORKER_NODE, valueFrom: {fieldRef: {fieldPath:
    /// spec.nodeName}}}]`. Empty: unknown.
    pub node: String,
    /// The failure domain (zone) this worker runs in; replicas go to another zone first. On
    /// Kubernetes, the node's `topology.kubernetes.io/zone` label: the downward API does not
    /// expose node labels, so set `SLUICE_WORKER_ZONE` per zone (one StatefulSet per zone) or
    /// from an init container. Empty: unknown.
    pub zone: String,
    /// Address the push server binds to (`0` port: any free port).
    pub push_listen: String,
    /// Address the fetch server binds to.
    pub fetch_listen: String,
    /// Address the HTTP admin port binds to: `/metrics`, `/healthz`, `/readyz` (ready: registered
    /// with a master and not decommissioning) and the worker's JSON API. Empty: no admin port.
    pub admin_listen: String,
    /// Record metrics (served on the admin port's `/metrics`). Off, every metric handle is a
    /// no-op.
    pub metrics: bool,
    /// Push port told to the master and clients; 0: the bound port. For a proxy or a NAT in
    /// front of the worker.
    pub advertise_push_port: u16,
    /// Fetch port told to the master and clients; 0: the bound port.
    pub advertise_fetch_port: u16,
    /// Data directories, one per disk. Each gets its own flusher.
    pub data_dirs: Vec<PathBuf>,
    /// Memory for partition buffers. Above it the worker stops reading pushes and answers `Busy`.
    pub memory_budget: ByteSize,
    /// A partition's buffer is flushed to disk once it holds this much.
    pub flush_buffer_size: ByteSize,
    /// Largest a partition location may grow; past it the writer moves the partition to a new
    /// epoch (on other workers where there are any). Above 0; the master caps the epochs of a
    /// partition (`max_epochs_per_partition`), so a cap far below a partition's size fails the
    /// writer rather than moving it forever.
    pub partition_size_cap: ByteSize,
    /// Largest chunk a reader fetches in one request.
    pub chunk_size: ByteSize,
    /// Disk write engine: `auto`, `io_uring` or `sync`.
    pub io_engine: IoEngineConfig,
    /// fsync data and index files when a partition is committed.
    pub fsync_on_commit: bool,
    /// How often the worker heartbeats to the master.
    #[serde(with = "sluice_protocol::duration")]
    pub heartbeat_interval: Duration,
    /// On SIGTERM (Kubernetes stopping the pod, a spot node reclaimed) the worker drains for at
    /// most this long: it takes no more pushes, hands over to other workers every copy that no
    /// other copy outlives, reports what it could not save as lost, then exits. Keep it a few
    /// seconds under the pod's `terminationGracePeriodSeconds`. `0s`: stop at once. A second
    /// SIGTERM, or SIGINT, stops at once.
    #[serde(with = "sluice_protocol::duration")]
    pub shutdown_drain: Duration,
    /// How long a push waits for memory below the budget before the worker answers `Busy`. At
    /// most 1 minute.
    #[serde(with = "sluice_protocol::duration")]
    pub busy_wait: Duration,
    /// How long a primary waits for its replica to take a forwarded push. Above 0, at most 10
    /// minutes.
    #[serde(with = "sluice_protocol::duration")]
    pub replica_timeout: Duration,
    /// Largest frame body accepted on the push and fetch ports.
    pub max_frame_body: ByteSize,
    /// Connections each port (push, fetch) holds at most; more are closed on accept.
    pub max_connections: usize,
    /// A connection that sends no frame for this long is closed.
    #[serde(with = "sluice_protocol::duration")]
    pub connection_idle_timeout: Duration,
    /// A frame whose header and body do not arrive within this long after its head is dropped
    /// with its connection (a stalled or slow-loris peer holds its memory lease no longer).
    #[serde(with = "sluice_protocol::duration")]
    pub frame_read_timeout: Duration,
    /// Pushed bytes wait in memory at most this long before they are flushed: what a killed
    /// worker can lose of its newest pushes (its restart recovers everything flushed).
    #[serde(with = "sluice_protocol::duration")]
    pub max_buffer_age: Duration,
    /// Path of the cluster secret file (one secret of at least 32 bytes per line; the first
    /// signs, every one verifies). Set, every push and fetch connection must open with the
    /// `Hello`/`Welcome` handshake and every frame is tagged; control frames are taken only
    /// from `master:*` and replica pushes only from `worker:*`; replica forwards authenticate as
    /// `worker:<id>`. Empty: no authentication (frames as before). Set it on the masters too.
    pub cluster_secret_file: String,
    /// A new connection must finish its TLS and session handshakes within this long, or it is
    /// closed (a peer holding connections open without authenticating holds them no longer).
    #[serde(with = "sluice_protocol::duration")]
    pub auth_handshake_timeout: Duration,
    /// Connections one IP address holds on each port (push, fetch) at most; more are closed on
    /// accept.
    pub max_connections_per_ip: usize,
    /// Connections of one application's sessions on each port at most (with a cluster secret);
    /// more are refused `Busy` after the handshake.
    pub max_connections_per_app: usize,
    /// PEM certificate chain the worker presents on its ports with TLS on (`tls_push`,
    /// `tls_fetch`, `tls_admin`).
    pub tls_cert_file: String,
    /// PEM private key of `tls_cert_file`.
    pub tls_key_file: String,
    /// PEM certificates of the CAs the worker trusts when it dials masters and other workers
    /// with `tls_connect`.
    pub tls_ca_file: String,
    /// Name the worker expects in the certificates of the peers it dials. Empty: the dialed
    /// host.
    pub tls_server_name: String,
    /// How often the certificate, key and CA files are checked for changes (cert-manager
    /// rotates them); new connections use the new files, open ones keep theirs.
    #[serde(with = "sluice_protocol::duration")]
    pub tls_reload_interval: Duration,
    /// TLS on the push port (writers, the master and replicating workers must dial it with TLS).
    pub tls_push: bool,
    /// TLS on the fetch port. Chunks are then read from disk and encrypted instead of sent with
    /// `sendfile`.
    pub tls_fetch: bool,
    /// TLS (HTTPS) on the admin port.
    pub tls_admin: bool,
    /// Dial masters and other workers' push ports with TLS (set when their ports have it on).
    pub tls_connect: bool,
    /// The DFS tier, through Apache OpenDAL: `s3://bucket/prefix` (any S3-compatible server;
    /// credentials from `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`),
    /// `hdfs://namenode:port/prefix` (a pure-Rust HDFS client, no JVM), or `fs:///path` (a
    /// shared file system every worker mounts). A draining worker uploads the copies it must
    /// save there, and another worker serves them from there. Every worker of a cluster names
    /// the same. Empty: no DFS (a drain hands files over to peers).
    pub dfs: String,
    /// Free space each data directory keeps when there is a DFS: below it, the worker moves
    /// committed locations of that directory to the DFS, largest first, until it is above again
    /// (they are then served from the DFS); and while every directory is below it, new
    /// locations are written straight to the DFS. `0B`: never.
    pub disk_reserve: ByteSize,
    /// A location on a local disk that grows past this size moves to the DFS as it is written:
    /// what its files hold is uploaded, and the rest of it goes straight to the DFS (its local
    /// files are deleted at commit). For partitions larger than a disk should hold. `0B`:
    /// never.
    pub dfs_location_size: ByteSize,
    /// The S3 endpoint of `dfs` (an S3-compatible server, `http://minio:9000`). Empty: AWS.
    pub dfs_endpoint: String,
    /// The S3 region of `dfs`.
    pub dfs_region: String,
    /// Fault injection, for tests of slow disks only: hold every disk write this long before it
    /// is issued, `"100ms"`, or a delay drawn per write from a range, `"50ms..200ms"` (the same
    /// sequence on every run). Empty: writes go to the disk at once.
    pub fault_write_delay: String,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            id: String::new(),
            master: "127.0.0.1:9097".into(),
            host: "127.0.0.1".into(),
            node: String::new(),
            zone: String::new(),
            push_listen: "0.0.0.0:9098".into(),
            fetch_listen: "0.0.0.0:9099".into(),
            admin_listen: "0.0.0.0:9096".into(),
            metrics: true,
            advertise_push_port: 0,
            advertise_fetch_port: 0,
            data_dirs: vec![PathBuf::from("/var/lib/sluice")],
            memory_budget: ByteSize::gib(1),
            flush_buffer_size: ByteSize::kib(512),
            partition_size_cap: ByteSize::gib(64),
            chunk_size: ByteSize::mib(4),
            io_engine: IoEngineConfig::Auto,
            fsync_on_commit: false,
            heartbeat_interval: Duration::from_secs(3),
            shutdown_drain: Duration::ZERO,
            busy_wait: Duration::from_millis(500),
            replica_timeout: Duration::from_secs(30),
            max_frame_body: ByteSize::mib(256),
            max_connections: 10_000,
            connection_idle_timeout: Duration::from_secs(600),
            frame_read_timeout: Duration::from_secs(30),
            max_buffer_age: Duration::from_millis(250),
            cluster_secret_file: String::new(),
            auth_handshake_timeout: Duration::from_secs(5),
            max_connections_per_ip: 512,
            max_connections_per_app: 2048,
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
            tls_ca_file: String::new(),
            tls_server_name: String::new(),
            tls_reload_interval: Duration::from_secs(10),
            tls_push: false,
            tls_fetch: false,
            tls_admin: false,
            tls_connect: false,
            dfs: String::new(),
            dfs_endpoint: String::new(),
            disk_reserve: ByteSize::b(0),
            dfs_location_size: ByteSize::b(0),
            dfs_region: "us-east-1".into(),
            fault_write_delay: String::new(),
        }
    }
}

impl WorkerConfig {
    /// Checks the values that types alone cannot.
    pub fn validate(&self) -> Result<(), String> {
        sluice_protocol::master_channel::parse_endpoints(&self.master)
            .map_err(|e| format!("master: {e}"))?;
        if self.data_dirs.is_empty() {
            return Err("data_dirs: at least one data directory is needed".into());
        }
        if self.memory_budget.as_u64() == 0 {
            return Err("memory_budget: must be above 0".into());
        }
        if self.chunk_size.as_u64() == 0 || self.chunk_size.as_u64() > self.max_frame_body.as_u64()
        {
            return Err("chunk_size: must be above 0 and at most max_frame_body".into());
        }
        if self.max_frame_body.as_u64() > u64::from(u32::MAX) {
            return Err("max_frame_body: must be below 4GiB".into());
        }
        if !self.dfs.is_empty() {
            crate::storage::dfs::Dfs::open(&self.dfs, &self.dfs_endpoint, &self.dfs_region)
                .map_err(|e| format!("dfs: {e}"))?;
        }
        if self.dfs.is_empty() && self.dfs_location_size.as_u64() > 0 {
            return Err("dfs_location_size: moves locations to a DFS, and no dfs is set".into());
        }
        if !self.fault_write_delay.is_empty() {
            crate::storage::engine::faulty::parse_delay(&self.fault_write_delay)
                .map_err(|e| format!("fault_write_delay: {e}"))?;
        }
        if self.heartbeat_interval.is_zero() {
            return Err("heartbeat_interval: must be above 0".into());
        }
        if self.partition_size_cap.as_u64() == 0 {
            return Err("partition_size_cap: must be above 0".into());
        }
        if self.busy_wait > MAX_BUSY_WAIT {
            return Err(format!("busy_wait: must be at most {MAX_BUSY_WAIT:?}"));
        }
        if self.replica_timeout.is_zero() || self.replica_timeout > MAX_REPLICA_TIMEOUT {
            return Err(format!(
                "replica_timeout: must be above 0 and at most {MAX_REPLICA_TIMEOUT:?}"
            ));
        }
        for (key, label) in [("node", &self.node), ("zone", &self.zone)] {
            if label.len() > 253 {
                return Err(format!("{key}: at most 253 characters"));
            }
        }
        for (key, value) in [
            ("max_connections", self.max_connections),
            ("max_connections_per_ip", self.max_connections_per_ip),
            ("max_connections_per_app", self.max_connections_per_app),
        ] {
            if value == 0 {
                return Err(format!("{key}: must be above 0"));
            }
        }
        sluice_protocol::config_check::tls(
            self.tls_push || self.tls_fetch || self.tls_admin,
            &self.tls_cert_file,
            &self.tls_key_file,
            self.tls_connect,
            &self.tls_ca_file,
        )?;
        for (key, value) in [
            ("auth_handshake_timeout", self.auth_handshake_timeout),
            ("tls_reload_interval", self.tls_reload_interval),
            ("connection_idle_timeout", self.connection_idle_timeout),
            ("frame_read_timeout", self.frame_read_timeout),
            ("max_buffer_age", self.max_buffer_age),
        ] {
            if value.is_zero() || value > Duration::from_secs(7 * 24 * 3600) {
                return Err(format!("{key}: must be above 0 and at most a week"));
            }
        }
        Ok(())
    }

    /// The worker's id: `id`, or when empty `<machine host name>-<push port>`.
    pub fn worker_id(&self, push_port: u32) -> String {
        if !self.id.is_empty() {
            return self.id.clone();
        }
        let machine = host_name().unwrap_or_else(|| self.host.clone());
        format!("{machine}-{push_port}")
    }

    /// What the worker tells the master about itself.
    pub fn worker_info(&self, push_port: u32, fetch_port: u32) -> pb::WorkerInfo {
        pb::WorkerInfo {
            id: self.worker_id(push_port),
            host: self.host.clone(),
            push_port,
            fetch_port,
            node: self.node.clone(),
            zone: self.zone.clone(),
            // Set from the bound admin listener, when there is one.
            admin_port: 0,
        }
    }
}

/// Reads a list of endpoints given as one comma-separated string or as a list of strings, as
/// the comma-separated string.
fn endpoint_list<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(
        untagged,
        expecting = "\"host:port[,host:port...]\" or a list of \"host:port\""
    )]
    enum List {
        Joined(String),
        Each(Vec<String>),
    }
    Ok(match List::deserialize(deserializer)? {
        List::Joined(list) => list,
        List::Each(list) => list.join(","),
    })
}

/// Longest `busy_wait`: a push waits this long at most before `Busy`; writers have given up
/// on the worker long before.
const MAX_BUSY_WAIT: Duration = Duration::from_secs(60);
/// Longest `replica_timeout`.
const MAX_REPLICA_TIMEOUT: Duration = Duration::from_secs(600);

/// This machine's host name (a pod's name on Kubernetes), when it has a usable one.
fn host_name() -> Option<String> {
    let mut buffer = [0u8; 256];
    // SAFETY: `buffer` is valid for writes of `buffer.len()` bytes; gethostname writes at most
    // that many and NUL-terminates unless the name was truncated, which the `position` below
    // tolerates by rejecting a name without a NUL.
    let rc = unsafe { libc::gethostname(buffer.as_mut_ptr().cast(), buffer.len()) };
    if rc != 0 {
        return None;
    }
    let len = buffer.iter().position(|b| *b == 0)?;
    let name = std::str::from_utf8(&buffer[..len]).ok()?;
    let usable = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    usable.then(|| name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_id_names_the_machine_not_a_loopback_address() {
        let config = WorkerConfig::default();
        let id = config.worker_id(9098);
        let machine = host_name().expect("this machine has a host name");
        assert_eq!(id, format!("{machine}-9098"));
        assert!(!id.starts_with("127.0.0.1"), "{id}");
        let named = WorkerConfig {
            id: "sluice-worker-0".into(),
            ..WorkerConfig::default()
        };
        assert_eq!(named.worker_id(9098), "sluice-worker-0");
    }

    #[test]
    fn labels_travel_in_the_worker_info() {
        let config = WorkerConfig {
            node: "node-7".into(),
            zone: "eu-west-1a".into(),
            ..WorkerConfig::default()
        };
        let info = config.worker_info(1, 2);
        assert_eq!(
            (info.node.as_str(), info.zone.as_str()),
            ("node-7", "eu-west-1a")
        );
        assert_eq!((info.push_port, info.fetch_port), (1, 2));
    }

    #[test]
    fn values_that_would_overflow_or_never_end_are_refused() {
        let refused = |config: WorkerConfig, key: &str| {
            let error = config.validate().unwrap_err();
            assert!(error.starts_with(key), "{error}");
        };
        let base = WorkerConfig::default;
        refused(
            WorkerConfig {
                partition_size_cap: ByteSize::b(0),
                ..base()
            },
            "partition_size_cap",
        );
        refused(
            WorkerConfig {
                busy_wait: Duration::from_secs(u64::MAX),
                ..base()
            },
            "busy_wait",
        );
        refused(
            WorkerConfig {
                replica_timeout: Duration::ZERO,
                ..base()
            },
            "replica_timeout",
        );
        refused(
            WorkerConfig {
                replica_timeout: Duration::from_secs(u64::MAX),
                ..base()
            },
            "replica_timeout",
        );
        refused(
            WorkerConfig {
                dfs_location_size: ByteSize::gib(1),
                ..base()
            },
            "dfs_location_size",
        );
        assert_eq!(base().validate(), Ok(()));
    }

    #[test]
    fn masters_are_a_comma_separated_string_or_a_list() {
        let parse = |toml: &str| -> WorkerConfig {
            WorkerConfig::deserialize(toml.parse::<toml::Table>().unwrap()).unwrap()
        };
        assert_eq!(parse("master = \"m1:1\"").master, "m1:1");
        assert_eq!(parse("master = \"m1:1, m2:2\"").master, "m1:1, m2:2");
        assert_eq!(
            parse("master = [\"m1:1\", \"m2:2\", \"m3:3\"]").master,
            "m1:1,m2:2,m3:3"
        );
        let error = WorkerConfig {
            master: "m1:1,,m3:3".into(),
            ..WorkerConfig::default()
        }
        .validate()
        .unwrap_err();
        assert!(error.starts_with("master"), "{error}");
        assert!(error.contains("\"\""), "{error}");
    }
}
