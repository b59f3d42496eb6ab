//! One data directory: its write engine (the disk's flusher) and its health and load figures.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sluice_protocol::pb;

use super::engine::IoEngine;

#[derive(Debug)]
pub struct Disk {
    pub path: PathBuf,
    pub engine: Arc<dyn IoEngine>,
    /// Partitions placed on this disk and not yet destroyed.
    pub active: AtomicU64,
    healthy: AtomicBool,
    flush_micros: AtomicU64,
    flushes: AtomicU64,
}

impl Disk {
    pub fn new(path: PathBuf, engine: Arc<dyn IoEngine>) -> Disk {
        Disk {
            path,
            engine,
            active: AtomicU64::new(0),
            healthy: AtomicBool::new(true),
            flush_micros: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
        }
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
