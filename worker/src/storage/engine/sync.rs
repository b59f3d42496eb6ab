//! The portable engine: one thread doing positional writes, one request at a time.

use std::{
    io,
    os::unix::fs::FileExt,
    sync::mpsc,
    thread::{self, JoinHandle},
};

use tokio::sync::oneshot;

use super::{reply, thread_name, EngineKind, IoEngine, WriteOutcome, WriteRequest};

type Job = (WriteRequest, oneshot::Sender<WriteOutcome>);

/// Writes with `pwrite` from a dedicated thread. Requests complete in submission order.
#[derive(Debug)]
pub struct SyncEngine {
    /// `None` only while dropping.
    tx: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl SyncEngine {
    /// Starts the thread `sluice-flush-<name>`.
    pub fn new(name: &str) -> io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Job>();
        let thread = thread::Builder::new()
            .name(thread_name(name))
            .spawn(move || {
                for (request, done) in rx {
                    let result = write_request(&request);
                    reply(done, request, result);
                }
            })?;
        Ok(SyncEngine {
            tx: Some(tx),
            thread: Some(thread),
        })
    }
}

/// Each buffer in turn at its offset; `write_all_at` retries `EINTR` and short writes.
fn write_request(request: &WriteRequest) -> io::Result<()> {
    request.check_range()?;
    let mut offset = request.offset;
    for buf in &request.bufs {
        request.file.write_all_at(buf, offset)?;
        offset += buf.len() as u64;
    }
    Ok(())
}

impl IoEngine for SyncEngine {
    fn kind(&self) -> EngineKind {
        EngineKind::Sync
    }

    fn submit(&self, request: WriteRequest) -> oneshot::Receiver<WriteOutcome> {
        let (done, rx) = oneshot::channel();
        if let Some(tx) = &self.tx {
            // If the thread is gone the job is dropped with its sender and `rx` reports it.
            let _ = tx.send((request, done));
        }
        rx
    }
}

impl Drop for SyncEngine {
    /// Closes the channel, lets the thread finish what is queued, and waits for it.
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
