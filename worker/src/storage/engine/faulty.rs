//! A test engine that fails writes on demand, to simulate a full or broken disk.
//!
//! Faults are decided at submission, deterministically: a failed request writes nothing and is
//! not passed to the wrapped engine.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

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
}

impl FaultyEngine {
    /// No faults until set through [`FaultyEngine::handle`].
    pub fn new(inner: Arc<dyn IoEngine>) -> Self {
        FaultyEngine {
            inner,
            state: Arc::default(),
        }
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

    /// Writes work again.
    pub fn clear(&self) {
        let mut faults = self.lock();
        faults.enospc_after = None;
        faults.eio = false;
    }

    /// Bytes passed to the wrapped engine so far (failed requests not included).
    pub fn bytes_written(&self) -> u64 {
        self.lock().written
    }

    fn lock(&self) -> MutexGuard<'_, Faults> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl IoEngine for FaultyEngine {
    fn kind(&self) -> EngineKind {
        self.inner.kind()
    }

    fn submit(&self, request: WriteRequest) -> oneshot::Receiver<WriteOutcome> {
        let fault = {
            let mut faults = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            let written = faults.written.saturating_add(request.len());
            if faults.eio {
                Some(libc::EIO)
            } else if faults.enospc_after.is_some_and(|limit| written > limit) {
                Some(libc::ENOSPC)
            } else {
                faults.written = written;
                None
            }
        };
        match fault {
            None => self.inner.submit(request),
            Some(errno) => {
                let (done, rx) = oneshot::channel();
                reply(done, request, Err(std::io::Error::from_raw_os_error(errno)));
                rx
            }
        }
    }
}
