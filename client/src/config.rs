//! Client settings.

use std::time::Duration;

use sluice_protocol::auth::Secret;
use sluice_protocol::batch::Codec;

#[derive(Debug, Clone, PartialEq)]
pub struct ClientConfig {
    /// The masters' gRPC addresses: one `host:port`, or several separated by commas
    /// (`"m1:9097,m2:9097,m3:9097"`) when the masters are replicated. Calls go to the leader,
    /// found by trying the list in order and following the masters' redirects.
    pub master: String,
    /// Copies of every pushed batch: 1, or 2 (a replica on another worker; a push is acked only
    /// once both hold it, and readers fail over to the replica). 0: the cluster's default, 2 when
    /// it has two or more live workers.
    pub replication: u32,
    /// Raw bytes buffered per partition before they are cut into a batch.
    pub batch_size: usize,
    /// Bytes of batches gathered per worker before a merged push is sent.
    pub push_size: usize,
    /// Pushes a writer keeps in flight before `write` waits for acks.
    pub max_inflight_pushes: usize,
    /// Raw bytes a writer buffers over all partitions before it cuts every buffer into batches.
    pub max_buffered: usize,
    /// The codec batches are compressed with: `lz4`, cheap on CPU; `zstd`, fewer bytes for more
    /// CPU, for slow or billed links and DFS tiers; or `none`. A batch the codec would not
    /// shrink is stored as is.
    pub compression: Codec,
    /// Limit for opening a connection to a master or a worker.
    pub connect_timeout: Duration,
    /// Limit for one push or fetch request: the ceiling of the adaptive timeout, which is a
    /// few times each worker's observed round trip.
    pub request_timeout: Duration,
    /// The floor of the adaptive request timeout: a push or fetch to a fast worker still gets
    /// this long.
    pub request_timeout_min: Duration,
    /// How long a push keeps retrying while the worker answers `Busy` or is unreachable.
    pub push_retry_timeout: Duration,
    /// Chunks a reader fetches ahead.
    pub prefetch_chunks: usize,
    /// Times a reader sends a failed fetch request (connection refused or broken, busy; a
    /// timeout only when no other copy holds the same batches) to the same copy again before it
    /// reads another copy, or with none left leaves the copy to the end-of-partition check.
    pub fetch_retries: u32,
    /// The wait before the first retry of a fetch request; it doubles for each further one.
    pub fetch_retry_wait: Duration,
    /// How long a reader waits for the shuffle's commit.
    pub layout_timeout: Duration,
    /// How long a master call keeps trying (the other masters, the leader a master names, a
    /// leader election, a restarting master) before it fails with the last error.
    pub master_retry_timeout: Duration,
    /// Limit for one attempt of a master call on one master; a master silent this long is
    /// treated as unreachable. Readers wait for a commit in polls of at most half of it.
    pub master_request_timeout: Duration,
    /// The application's secret (Spark's `spark.authenticate.secret`, or
    /// `spark.sluice.auth.secret`). Set, the client registers its application's key with the
    /// master, signs every master call and opens every push and fetch connection as
    /// `app:<app id>`; another application's client can touch nothing of this one's. Needed when
    /// the cluster runs with a cluster secret.
    pub app_secret: Option<Secret>,
    /// Dial the masters and the workers with TLS (their ports must have it on).
    pub tls: bool,
    /// PEM certificates of the CAs that sign the masters' and workers' certificates.
    pub tls_ca_file: String,
    /// Name expected in the servers' certificates. Empty: the dialed host.
    pub tls_server_name: String,
}

impl ClientConfig {
    /// Defaults, with the masters at `master` (`host:port[,host:port...]`).
    pub fn new(master: impl Into<String>) -> ClientConfig {
        ClientConfig {
            master: master.into(),
            replication: 0,
            batch_size: 256 * 1024,
            push_size: 1024 * 1024,
            max_inflight_pushes: 16,
            max_buffered: 64 * 1024 * 1024,
            compression: Codec::Lz4,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(60),
            request_timeout_min: Duration::from_secs(3),
            push_retry_timeout: Duration::from_secs(120),
            prefetch_chunks: 4,
            fetch_retries: 3,
            fetch_retry_wait: Duration::from_millis(200),
            layout_timeout: Duration::from_secs(600),
            master_retry_timeout: Duration::from_secs(15),
            master_request_timeout: Duration::from_secs(60),
            app_secret: None,
            tls: false,
            tls_ca_file: String::new(),
            tls_server_name: String::new(),
        }
    }
}
