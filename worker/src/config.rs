//! Worker configuration. Every key is documented where it is declared; unknown keys are errors.

use std::path::PathBuf;
use std::time::Duration;

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};

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
    /// Stable worker id (a StatefulSet pod name). Empty: `<host>-<push port>`.
    pub id: String,
    /// Address (`host:port`) of the master's gRPC endpoint.
    pub master: String,
    /// Host name or address that clients and the master use to reach this worker.
    pub host: String,
    /// Address the push server binds to (`0` port: any free port).
    pub push_listen: String,
    /// Address the fetch server binds to.
    pub fetch_listen: String,
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
    /// epoch (on other workers where there are any).
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
    /// How long a push waits for memory below the budget before the worker answers `Busy`.
    #[serde(with = "sluice_protocol::duration")]
    pub busy_wait: Duration,
    /// How long a primary waits for its replica to take a forwarded push.
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
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            id: String::new(),
            master: "127.0.0.1:9097".into(),
            host: "127.0.0.1".into(),
            push_listen: "0.0.0.0:9098".into(),
            fetch_listen: "0.0.0.0:9099".into(),
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
            busy_wait: Duration::from_millis(500),
            replica_timeout: Duration::from_secs(30),
            max_frame_body: ByteSize::mib(256),
            max_connections: 10_000,
            connection_idle_timeout: Duration::from_secs(600),
            frame_read_timeout: Duration::from_secs(30),
            max_buffer_age: Duration::from_secs(1),
        }
    }
}

impl WorkerConfig {
    /// Checks the values that types alone cannot.
    pub fn validate(&self) -> Result<(), String> {
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
        if self.heartbeat_interval.is_zero() {
            return Err("heartbeat_interval: must be above 0".into());
        }
        if self.max_connections == 0 {
            return Err("max_connections: must be above 0".into());
        }
        for (key, value) in [
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
}
