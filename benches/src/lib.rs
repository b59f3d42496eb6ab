//! Fixtures shared by Sluice's criterion micro-benchmarks (`benches/benches/*.rs`).
//!
//! Every benchmark measures a hot path on the same data: records made by [`sluice::records`]
//! (the end-to-end benchmark's records, which compress about like real shuffle data), cut into
//! batches of the client's default size with [`batch::encode_into`], as a writer would.
//!
//! - `frame`: frame heads, whole-frame encode and parse, and [`FrameReader`]/[`FrameWriter`]
//!   over in-memory streams (protocol `frame.rs`, `connection.rs`).
//! - `batch`: batch build with LZ4, zstd and stored, CRC verify, decompress, and the [`BatchIter`]
//!   walk (protocol `batch.rs`).
//! - `writer`: [`ShuffleWriter::write`] per record, against an in-process cluster, with pushes
//!   held back so only the client's own work is timed (client `writer.rs`).
//! - `reader`: the per-chunk decode a reader does, and whole partitions read through
//!   [`ShuffleReader`] from an in-process cluster, dedup included (client `reader/`).
//! - `index`: index entries encoded, decoded and cut into chunks (worker `storage/index.rs`).
//!
//! [`FrameReader`]: sluice_protocol::connection::FrameReader
//! [`FrameWriter`]: sluice_protocol::connection::FrameWriter
//! [`BatchIter`]: sluice_protocol::batch::BatchIter
//! [`ShuffleWriter::write`]: sluice_client::ShuffleWriter::write
//! [`ShuffleReader`]: sluice_client::ShuffleReader

use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::Context;
use bytes::Bytes;
use sluice::local::{LocalCluster, LocalOptions};
use sluice::records;
use sluice_client::{ClientConfig, SluiceClient};
use sluice_protocol::batch::{self, BatchTag, Codec};

/// The client's default batch size (`ClientConfig::batch_size`): what writers cut and readers
/// decode.
pub const BATCH_SIZE: usize = 256 * 1024;

/// The client's default push size (`ClientConfig::push_size`): the body of a merged push.
pub const PUSH_SIZE: usize = 1024 * 1024;

/// Records of `record_size` bytes of map `map`, back to back, `total` bytes or a little less
/// (whole records only).
pub fn records(map: u32, total: usize, record_size: usize) -> Vec<u8> {
    let record_size = record_size.max(records::RECORD_HEAD);
    let mut out = Vec::with_capacity(total);
    let mut seq = 0;
    while out.len() + record_size <= total {
        records::encode(&mut out, map, seq, record_size);
        seq += 1;
    }
    out
}

/// `count` batches of `batch_len` raw bytes of 100-byte records, back to back, as a worker
/// stores them and a chunk carries them: partition 0, map 0, batch ids `0..count`.
pub fn chunk(count: u32, batch_len: usize, codec: Codec) -> Bytes {
    let raw = records(0, batch_len, 100);
    let mut out = Vec::new();
    for batch_id in 0..count {
        let tag = BatchTag {
            partition: 0,
            map_id: 0,
            attempt: 0,
            batch_id,
        };
        batch::encode_into(&mut out, tag, &raw, codec).expect("a batch below the limit");
    }
    Bytes::from(out)
}

/// A current-thread runtime, for driving async hot paths to completion inside a timed loop.
pub fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("building a tokio runtime")
}

/// An in-process cluster (one master, one worker, on loopback ports, in a temporary
/// directory) with the runtime that runs it.
pub struct BenchCluster {
    pub runtime: tokio::runtime::Runtime,
    cluster: Option<LocalCluster>,
    /// Removed when the cluster is dropped, after it stopped.
    _data_dir: tempfile::TempDir,
    next_app: AtomicU32,
}

impl BenchCluster {
    /// Starts the cluster and waits until its worker registered.
    pub fn start() -> anyhow::Result<BenchCluster> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("building a tokio runtime")?;
        let data_dir = tempfile::tempdir().context("creating a data directory")?;
        let mut options = LocalOptions::new(1, data_dir.path());
        options.admin = false;
        let cluster = runtime.block_on(LocalCluster::start(options))?;
        Ok(BenchCluster {
            runtime,
            cluster: Some(cluster),
            _data_dir: data_dir,
            next_app: AtomicU32::new(0),
        })
    }

    /// A client of the cluster, with `config`'s changes applied to the defaults.
    pub fn client(&self, config: impl FnOnce(&mut ClientConfig)) -> anyhow::Result<SluiceClient> {
        let cluster = self.cluster.as_ref().context("cluster stopped")?;
        let mut settings = cluster.client_config();
        config(&mut settings);
        // The client dials lazily but builds its channels on the runtime.
        let _guard = self.runtime.enter();
        Ok(SluiceClient::new(settings)?)
    }

    /// A fresh application id, so shuffles of one run never meet.
    pub fn app_id(&self) -> String {
        format!(
            "bench-{}-{}",
            std::process::id(),
            self.next_app.fetch_add(1, Ordering::Relaxed)
        )
    }
}

impl Drop for BenchCluster {
    fn drop(&mut self) {
        if let Some(cluster) = self.cluster.take() {
            if let Err(e) = self.runtime.block_on(cluster.shutdown()) {
                eprintln!("stopping the benchmark cluster failed: {e:#}");
            }
        }
    }
}
