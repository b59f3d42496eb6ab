//! One data directory: its flusher, its write engine, and its health and load figures.
//!
//! Partitions hand their flushes to the disk's flusher as jobs. The flusher takes them in
//! order, opens the location's files off the runtime (the first job of a location creates
//! them; running out of descriptors is waited out, not a failure), submits the writes to the
//! engine, and keeps at most [`MAX_FLUSHES_IN_FLIGHT`] flushes in flight, so the descriptors a
//! disk holds are bounded by its flushes, never by how many partitions it has. Each job's
//! outcome goes back on its own channel; the disk never calls into a partition. The written
//! buffers are dropped as soon as their write completes, which gives their memory back.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use metrics::Histogram;
use sluice_protocol::pb;
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::engine::{IoEngine, WriteOutcome, WriteRequest};
use super::layout::{IndexOpen, LocationFiles};

/// Flushes a disk has open (files opened, writes submitted) at once.
pub const MAX_FLUSHES_IN_FLIGHT: usize = 64;

/// One flush of a partition: its pending batches and their index entries, at the offsets
/// assigned when they were appended.
#[derive(Debug)]
pub struct FlushJob {
    pub files: LocationFiles,
    /// The location's first flush: create (truncate) its data file.
    pub create: bool,
    pub data_offset: u64,
    pub bufs: Vec<Bytes>,
    /// What to write to the index file; `None` while the location keeps its index in memory.
    pub index: Option<IndexWrite>,
    /// Where the outcome goes once both writes ended.
    pub done: oneshot::Sender<std::io::Result<()>>,
}

/// Index entries to write to a location's index file.
#[derive(Debug)]
pub struct IndexWrite {
    /// Create (truncate) the file first.
    pub create: bool,
    pub offset: u64,
    pub bytes: Bytes,
}

/// How long a flush waits out a process or system out of file descriptors before failing.
const DESCRIPTOR_WAIT: Duration = Duration::from_secs(10);

/// How long a disk may take to answer `statvfs` before it is reported unhealthy.
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);

fn out_of_descriptors(error: &std::io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EMFILE) | Some(libc::ENFILE)
    )
}

/// Whether an I/O error says the disk itself is in trouble (as opposed to a deleted directory
/// or this process running out of descriptors).
pub fn is_disk_fault(error: &std::io::Error) -> bool {
    error.kind() != std::io::ErrorKind::NotFound && !out_of_descriptors(error)
}

#[derive(Debug)]
pub struct Disk {
    pub path: PathBuf,
    pub engine: Arc<dyn IoEngine>,
    flusher: mpsc::UnboundedSender<FlushJob>,
    healthy: AtomicBool,
    flush_micros: AtomicU64,
    flushes: AtomicU64,
    /// Every flush's latency (the worker's `sluice_worker_flush_latency_seconds`).
    flush_latency: Histogram,
    /// Bytes and files of the locations this disk holds (see [`Disk::hold`]).
    held_bytes: AtomicU64,
    held_files: AtomicU64,
    /// The file system's size and free bytes as of the last [`Disk::status`].
    capacity: AtomicU64,
    free: AtomicU64,
    space_answered: AtomicBool,
}

/// What a data directory holds and has room for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskUsage {
    /// Bytes of the data and index files of the locations on it.
    pub used_bytes: u64,
    /// Files of the locations on it: data and index.
    pub files: u64,
    /// From the last `statvfs` (the heartbeat's); 0 before the first.
    pub capacity_bytes: u64,
    pub free_bytes: u64,
    /// Whether that last `statvfs` answered in time (false before the first).
    pub space_answered: bool,
}

impl Disk {
    /// Creates the disk; its flusher's job queue is returned for [`run_flusher`].
    pub fn new(path: PathBuf, engine: Arc<dyn IoEngine>) -> (Disk, FlushQueue) {
        Disk::measured(path, engine, Histogram::noop())
    }

    /// [`Disk::new`], recording every flush's latency in `flush_latency`.
    pub fn measured(
        path: PathBuf,
        engine: Arc<dyn IoEngine>,
        flush_latency: Histogram,
    ) -> (Disk, FlushQueue) {
        let (flusher, jobs) = mpsc::unbounded_channel();
        let disk = Disk {
            path,
            engine,
            flusher,
            healthy: AtomicBool::new(true),
            flush_micros: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
            flush_latency,
            held_bytes: AtomicU64::new(0),
            held_files: AtomicU64::new(0),
            capacity: AtomicU64::new(0),
            free: AtomicU64::new(0),
            space_answered: AtomicBool::new(false),
        };
        (disk, FlushQueue(jobs))
    }

    /// Counts `bytes` and `files` more held by this disk's locations.
    pub fn hold(&self, bytes: u64, files: u64) {
        if bytes > 0 {
            self.held_bytes.fetch_add(bytes, Ordering::Relaxed);
        }
        if files > 0 {
            self.held_files.fetch_add(files, Ordering::Relaxed);
        }
    }

    /// Counts `bytes` and `files` of a deleted location as no longer held.
    pub fn release(&self, bytes: u64, files: u64) {
        let sub = |held: &AtomicU64, n: u64| {
            let _ = held.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(n))
            });
        };
        sub(&self.held_bytes, bytes);
        sub(&self.held_files, files);
    }

    /// What the disk holds, and its space as of the last [`Disk::status`]. No I/O.
    pub fn usage(&self) -> DiskUsage {
        DiskUsage {
            used_bytes: self.held_bytes.load(Ordering::Relaxed),
            files: self.held_files.load(Ordering::Relaxed),
            capacity_bytes: self.capacity.load(Ordering::Relaxed),
            free_bytes: self.free.load(Ordering::Relaxed),
            space_answered: self.space_answered.load(Ordering::Relaxed),
        }
    }

    /// Queues a flush. False only if the flusher has stopped (the worker is shutting down).
    pub fn flush(&self, job: FlushJob) -> bool {
        self.flusher.send(job).is_ok()
    }

    /// Records a flush's latency and health, and hands its outcome to whoever waits for it.
    fn flush_ended(
        &self,
        started: std::time::Instant,
        result: std::io::Result<()>,
        done: oneshot::Sender<std::io::Result<()>>,
    ) {
        self.record_flush(started.elapsed());
        if result.as_ref().is_err_and(is_disk_fault) {
            self.mark_unhealthy();
        }
        let _ = done.send(result);
    }

    fn record_flush(&self, took: Duration) {
        self.flush_latency.record(took.as_secs_f64());
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

    /// Capacity, free space and the mean flush latency since the last call. `statvfs` runs off
    /// the runtime; a disk that does not answer in time is reported unhealthy for this call.
    /// The space it finds is kept for [`Disk::usage`] (metrics scrapes do no I/O).
    pub async fn status(&self) -> pb::DiskStatus {
        let path = self.path.clone();
        let asked = tokio::task::spawn_blocking(move || space(&path));
        let (space, answered) = match tokio::time::timeout(STATUS_TIMEOUT, asked).await {
            Ok(Ok(Ok(space))) => (space, true),
            Ok(Ok(Err(_))) | Ok(Err(_)) => ((0, 0), true),
            Err(_) => {
                tracing::warn!(disk = %self.path.display(), "statvfs did not answer in time");
                ((0, 0), false)
            }
        };
        let (capacity_bytes, free_bytes) = space;
        self.space_answered.store(answered, Ordering::Relaxed);
        if answered {
            self.capacity.store(capacity_bytes, Ordering::Relaxed);
            self.free.store(free_bytes, Ordering::Relaxed);
        }
        let micros = self.flush_micros.swap(0, Ordering::Relaxed);
        let flushes = self.flushes.swap(0, Ordering::Relaxed);
        pb::DiskStatus {
            path: self.path.display().to_string(),
            capacity_bytes,
            free_bytes,
            flush_latency_us: micros.checked_div(flushes).unwrap_or(0),
            healthy: answered && self.is_healthy(),
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

/// The jobs queued for one disk's flusher.
#[derive(Debug)]
pub struct FlushQueue(mpsc::UnboundedReceiver<FlushJob>);

/// Opens a job's files off the runtime, waiting out a shortage of descriptors.
async fn open_files(
    files: &LocationFiles,
    create: bool,
    index: IndexOpen,
) -> std::io::Result<(File, Option<File>)> {
    retry_out_of_descriptors(DESCRIPTOR_WAIT, || {
        let files = files.clone();
        async move {
            tokio::task::spawn_blocking(move || files.open_for_write(create, index))
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)))
        }
    })
    .await
}

/// Runs `attempt` until it does not fail with EMFILE/ENFILE (backing off up to 1 s between
/// tries) or `limit` has passed: running out of descriptors is a passing shortage, not a fault
/// of the location.
async fn retry_out_of_descriptors<T, F, Fut>(limit: Duration, mut attempt: F) -> std::io::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::io::Result<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    let mut pause = Duration::from_millis(10);
    loop {
        match attempt().await {
            Err(e) if out_of_descriptors(&e) && tokio::time::Instant::now() < deadline => {
                tracing::warn!(error = %e, "out of file descriptors, a flush waits");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
            result => return result,
        }
    }
}

/// Runs one disk's flusher until the disk is dropped (its queue then closes). Jobs are opened
/// and submitted in queue order (a location's first flush creates the files its later flushes
/// open); their writes then complete concurrently.
pub async fn run_flusher(disk: std::sync::Weak<Disk>, queue: FlushQueue) {
    let FlushQueue(mut jobs) = queue;
    let permits = Arc::new(Semaphore::new(MAX_FLUSHES_IN_FLIGHT));
    while let Some(job) = jobs.recv().await {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let Some(disk) = disk.upgrade() else {
            return;
        };
        let started = std::time::Instant::now();
        let FlushJob {
            files,
            create,
            data_offset,
            bufs,
            index,
            done,
        } = job;
        let index_open = match &index {
            None => IndexOpen::No,
            Some(write) if write.create => IndexOpen::Create,
            Some(_) => IndexOpen::Open,
        };
        let (data, index_file) = match open_files(&files, create, index_open).await {
            Ok(opened) => opened,
            Err(e) => {
                disk.flush_ended(started, Err(e), done);
                continue;
            }
        };
        let data_rx = disk.engine.submit(WriteRequest {
            file: Arc::new(data),
            offset: data_offset,
            bufs,
        });
        let index_rx = index.zip(index_file).map(|(write, file)| {
            disk.engine.submit(WriteRequest {
                file: Arc::new(file),
                offset: write.offset,
                bufs: vec![write.bytes],
            })
        });
        tokio::spawn(async move {
            let outcome = |received: Result<WriteOutcome, _>| match received {
                Ok(outcome) => outcome.result,
                Err(_) => Err(std::io::Error::other("write engine stopped")),
            };
            let mut result = outcome(data_rx.await);
            if let Some(index_rx) = index_rx {
                result = result.and(outcome(index_rx.await));
            }
            drop(permit);
            disk.flush_ended(started, result, done);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn emfile() -> std::io::Error {
        std::io::Error::from_raw_os_error(libc::EMFILE)
    }

    #[tokio::test(start_paused = true)]
    async fn running_out_of_descriptors_is_waited_out_not_a_failure() {
        let mut tries = 0;
        let opened = retry_out_of_descriptors(DESCRIPTOR_WAIT, || {
            tries += 1;
            let result = if tries < 4 { Err(emfile()) } else { Ok(tries) };
            async move { result }
        })
        .await;
        assert_eq!(opened.unwrap(), 4);
        assert!(
            !is_disk_fault(&emfile()),
            "a shortage never marks the disk unhealthy"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_lasting_shortage_or_another_error_ends_the_wait() {
        let lasting =
            retry_out_of_descriptors(Duration::from_secs(2), || async { Err::<(), _>(emfile()) });
        assert_eq!(
            lasting.await.unwrap_err().raw_os_error(),
            Some(libc::EMFILE)
        );
        let mut tries = 0;
        let other = retry_out_of_descriptors(DESCRIPTOR_WAIT, || {
            tries += 1;
            async { Err::<(), _>(std::io::Error::from_raw_os_error(libc::EIO)) }
        });
        assert_eq!(other.await.unwrap_err().raw_os_error(), Some(libc::EIO));
        assert_eq!(tries, 1);
    }
}
