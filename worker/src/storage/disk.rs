//! One data directory: its flusher, its write engine, and its health and load figures.
//!
//! Partitions hand their flushes to the disk's flusher as jobs. The flusher takes them in
//! order, opens the partition's files (the first job of a partition creates them), submits the
//! writes to the engine, and keeps at most [`MAX_FLUSHES_IN_FLIGHT`] flushes in flight, so the
//! descriptors a disk holds are bounded by its flushes, never by how many partitions it has.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sluice_protocol::pb;
use tokio::sync::{mpsc, Semaphore};

use super::engine::{IoEngine, WriteOutcome, WriteRequest};
use super::partition::Partition;

/// Flushes a disk has open (files opened, writes submitted) at once.
pub const MAX_FLUSHES_IN_FLIGHT: usize = 64;

/// One flush of a partition: its pending batches and their index entries, at the offsets
/// assigned when they were appended.
#[derive(Debug)]
pub struct FlushJob {
    pub partition: Arc<Partition>,
    /// The partition's first flush: create (truncate) its files.
    pub create: bool,
    pub data_offset: u64,
    pub bufs: Vec<Bytes>,
    pub index_offset: u64,
    pub index: Bytes,
    /// Bytes of `bufs`, released from the memory budget when the flush ends.
    pub len: u64,
}

/// Whether an I/O error says the disk itself is in trouble (as opposed to a deleted directory
/// or this process running out of descriptors).
pub fn is_disk_fault(error: &std::io::Error) -> bool {
    error.kind() != std::io::ErrorKind::NotFound
        && !matches!(
            error.raw_os_error(),
            Some(libc::EMFILE) | Some(libc::ENFILE)
        )
}

#[derive(Debug)]
pub struct Disk {
    pub path: PathBuf,
    pub engine: Arc<dyn IoEngine>,
    flusher: mpsc::UnboundedSender<FlushJob>,
    /// Partitions placed on this disk and not yet destroyed.
    pub active: AtomicU64,
    healthy: AtomicBool,
    flush_micros: AtomicU64,
    flushes: AtomicU64,
}

impl Disk {
    /// Creates the disk and starts its flusher (on the current tokio runtime).
    pub fn new(path: PathBuf, engine: Arc<dyn IoEngine>) -> Disk {
        let (flusher, jobs) = mpsc::unbounded_channel();
        tokio::spawn(run_flusher(engine.clone(), jobs));
        Disk {
            path,
            engine,
            flusher,
            active: AtomicU64::new(0),
            healthy: AtomicBool::new(true),
            flush_micros: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
        }
    }

    /// Queues a flush. Fails only if the flusher has stopped (the worker is shutting down).
    pub fn flush(&self, job: FlushJob) -> Result<(), FlushJob> {
        self.flusher.send(job).map_err(|e| e.0)
    }

    pub fn record_flush(&self, took: Duration) {
        self.flush_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
        self.flushes.fetch_add(1, Ordering::Relaxed);
    }

    pub fn mark_unhealthy(&self) {
        self.healthy.store(false, Ordering::Relaxed);
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Capacity, free space and the mean flush latency since the last call.
    pub fn status(&self) -> pb::DiskStatus {
        let (capacity_bytes, free_bytes) = space(&self.path).unwrap_or((0, 0));
        let micros = self.flush_micros.swap(0, Ordering::Relaxed);
        let flushes = self.flushes.swap(0, Ordering::Relaxed);
        pb::DiskStatus {
            path: self.path.display().to_string(),
            capacity_bytes,
            free_bytes,
            flush_latency_us: micros.checked_div(flushes).unwrap_or(0),
            healthy: self.is_healthy(),
        }
    }
}

/// `(capacity, available)` bytes of the file system holding `path`.
// statvfs field types differ between platforms (u32 on some), hence the conversions.
#[allow(clippy::useless_conversion)]
pub fn space(path: &Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c_path` is a valid NUL-terminated string and `stat` points to writable memory of
    // the right type; statvfs only writes into it.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), stat.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it initialised `stat`.
    let stat = unsafe { stat.assume_init() };
    let block = u64::from(stat.f_frsize);
    Ok((
        u64::from(stat.f_blocks).saturating_mul(block),
        u64::from(stat.f_bavail).saturating_mul(block),
    ))
}

async fn run_flusher(engine: Arc<dyn IoEngine>, mut jobs: mpsc::UnboundedReceiver<FlushJob>) {
    let permits = Arc::new(Semaphore::new(MAX_FLUSHES_IN_FLIGHT));
    while let Some(job) = jobs.recv().await {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let started = std::time::Instant::now();
        let FlushJob {
            partition,
            create,
            data_offset,
            bufs,
            index_offset,
            index,
            len,
        } = job;
        let (data, index_file) = match partition.open_files(create) {
            Ok(files) => files,
            Err(e) => {
                partition.flush_done(len, Err(e), started.elapsed());
                continue;
            }
        };
        let data_rx = engine.submit(WriteRequest {
            file: data,
            offset: data_offset,
            bufs,
        });
        let index_rx = engine.submit(WriteRequest {
            file: index_file,
            offset: index_offset,
            bufs: vec![index],
        });
        tokio::spawn(async move {
            let outcome = |received: Result<WriteOutcome, _>| match received {
                Ok(outcome) => outcome.result,
                Err(_) => Err(std::io::Error::other("write engine stopped")),
            };
            let result = outcome(data_rx.await).and(outcome(index_rx.await));
            partition.flush_done(len, result, started.elapsed());
            drop(permit);
        });
    }
}
