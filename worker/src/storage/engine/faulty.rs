//! A test engine that fails or slows writes on demand, to simulate a full, broken or slow disk.
//!
//! Faults are decided at submission, deterministically: a failed request writes nothing and is
//! not passed to the wrapped engine. A slow disk ([`FaultHandle::delay_writes`], or the worker's
//! `fault_write_delay` key) holds every request for a delay drawn from a range by a seeded
//! generator before passing it on; requests still reach the wrapped engine in submission order
//! (each is held until at least the one before was released), as on a disk whose queue is slow.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use tokio::sync::oneshot;

use super::{reply, EngineKind, IoEngine, WriteOutcome, WriteRequest};

/// Wraps another engine; [`FaultHandle`] switches faults on and off.
#[derive(Debug)]
pub struct FaultyEngine {
    inner: Arc<dyn IoEngine>,
    state: Arc<Mutex<Faults>>,
}

/// Switches the faults of one [`FaultyEngine`]; cheap to clone.
#[derive(Debug, Clone)]
pub struct FaultHandle {
    state: Arc<Mutex<Faults>>,
}

#[derive(Debug, Default)]
struct Faults {
    /// Bytes of all requests passed to the wrapped engine so far.
    written: u64,
    /// Fail with `ENOSPC` any request that would take `written` past this.
    enospc_after: Option<u64>,
    /// Fail every request with `EIO`.
    eio: bool,
    /// Hold every request for a delay in this range (inclusive) before passing it on.
    delay: Option<(Duration, Duration)>,
    /// The generator of the delays (xorshift64; never 0).
    rng: u64,
    /// When the last held request is released: the next one is released no earlier.
    last_release: Option<Instant>,
}

/// A range of write delays, `"100ms"` or `"50ms..200ms"` (what `fault_write_delay` takes).
pub fn parse_delay(text: &str) -> Result<(Duration, Duration), String> {
    let parse =
        |part: &str| humantime::parse_duration(part.trim()).map_err(|e| format!("{part:?}: {e}"));
    let (low, high) = match text.split_once("..") {
        Some((low, high)) => (parse(low)?, parse(high)?),
        None => {
            let one = parse(text)?;
            (one, one)
        }
    };
    if low > high {
        return Err(format!("{text:?}: the low end is above the high end"));
    }
    if high > Duration::from_secs(60) {
        return Err(format!("{text:?}: at most 1 minute"));
    }
    Ok((low, high))
}

impl FaultyEngine {
    /// No faults until set through [`FaultyEngine::handle`].
    pub fn new(inner: Arc<dyn IoEngine>) -> Self {
        FaultyEngine {
            inner,
            state: Arc::default(),
        }
    }

    /// A slow disk: every write held for a delay in `[low, high]`, drawn from `seed`.
    pub fn slow(inner: Arc<dyn IoEngine>, (low, high): (Duration, Duration), seed: u64) -> Self {
        let engine = FaultyEngine::new(inner);
        engine.handle().delay_writes(low, high, seed);
        engine
    }

    pub fn handle(&self) -> FaultHandle {
        FaultHandle {
            state: self.state.clone(),
        }
    }
}

impl FaultHandle {
    /// The disk holds `limit` bytes: once more than `limit` bytes would have been written through
    /// this engine in total (since it was created), the request fails with `ENOSPC`
    /// (`io::ErrorKind::StorageFull`). Smaller requests that still fit succeed.
    pub fn fail_enospc_after(&self, limit: u64) {
        self.lock().enospc_after = Some(limit);
    }

    /// Every write from now on fails with `EIO`.
    pub fn fail_eio(&self) {
        self.lock().eio = true;
    }

    /// Every write from now on is held for a delay in `[low, high]` (drawn by a generator
    /// seeded with `seed`) before it reaches the disk, in submission order.
    pub fn delay_writes(&self, low: Duration, high: Duration, seed: u64) {
        let mut faults = self.lock();
        faults.delay = Some((low, high.max(low)));
        faults.rng = seed | 1;
    }

    /// Writes work again, at full speed.
    pub fn clear(&self) {
        let mut faults = self.lock();
        faults.enospc_after = None;
        faults.eio = false;
        faults.delay = None;
    }

    /// Bytes passed to the wrapped engine so far (failed requests not included).
    pub fn bytes_written(&self) -> u64 {
        self.lock().written
    }

    fn lock(&self) -> MutexGuard<'_, Faults> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Faults {
    /// When a request submitted now is released to the wrapped engine, with a slow disk set.
    fn release_time(&mut self) -> Option<Instant> {
        let (low, high) = self.delay?;
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let span = (high - low).as_micros() as u64;
        let delay = low + Duration::from_micros(if span == 0 { 0 } else { self.rng % (span + 1) });
        let at = Instant::now() + delay;
        let at = self.last_release.map_or(at, |last| at.max(last));
        self.last_release = Some(at);
        Some(at)
    }
}

impl IoEngine for FaultyEngine {
    fn kind(&self) -> EngineKind {
        self.inner.kind()
    }

    fn submit(&self, request: WriteRequest) -> oneshot::Receiver<WriteOutcome> {
        let (fault, release) = {
            let mut faults = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            let written = faults.written.saturating_add(request.len());
            if faults.eio {
                (Some(libc::EIO), None)
            } else if faults.enospc_after.is_some_and(|limit| written > limit) {
                (Some(libc::ENOSPC), None)
            } else {
                faults.written = written;
                (None, faults.release_time())
            }
        };
        match fault {
            None => match (release, tokio::runtime::Handle::try_current()) {
                (Some(at), Ok(runtime)) => {
                    let (done, rx) = oneshot::channel();
                    let inner = self.inner.clone();
                    runtime.spawn(async move {
                        tokio::time::sleep_until(at).await;
                        let outcome = match inner.submit(request).await {
                            Ok(outcome) => outcome,
                            // The wrapped engine shut down: the caller sees the sender dropped.
                            Err(_) => return,
                        };
                        let _ = done.send(outcome);
                    });
                    rx
                }
                // Off a runtime there is nothing to wait on: the write goes through at once.
                _ => self.inner.submit(request),
            },
            Some(errno) => {
                let (done, rx) = oneshot::channel();
                reply(done, request, Err(std::io::Error::from_raw_os_error(errno)));
                rx
            }
        }
    }
}
