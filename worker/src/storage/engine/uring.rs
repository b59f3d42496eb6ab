//! The `io_uring` engine: one ring per disk, driven by one dedicated thread.
//!
//! A request is admitted into the slot table, which owns it (file and buffers) until its
//! outcome is sent. Each non-empty buffer becomes a write op queued in `ready`; ops move from
//! `ready` into the submission queue while fewer than the ring's size are in the kernel (so the
//! completion queue, twice that size, cannot overflow). An op's `user_data` is its slot and
//! buffer index. When a completion comes back:
//!
//! - bytes written: advance the buffer; what is left of it goes back to the front of `ready`
//!   (short writes, and buffers longer than one op may carry);
//! - `EINTR`/`EAGAIN`: the same op goes back to the front of `ready`;
//! - any other error: the request's first error is recorded and its queued ops dropped.
//!
//! A request completes once nothing of it is in the kernel and it is fully written or failed.

use std::{
    collections::VecDeque,
    io, mem,
    os::fd::AsRawFd,
    sync::mpsc::{self, TryRecvError},
    thread::{self, JoinHandle},
};

use bytes::Bytes;
use io_uring::{opcode, types, IoUring, Probe};
use tokio::sync::oneshot;
use tracing::error;

use super::{reply, thread_name, EngineKind, IoEngine, WriteOutcome, WriteRequest};

/// Submission queue size of a ring: how many write ops one disk has in the kernel at most.
const RING_ENTRIES: u32 = 256;
/// Longest single write op; longer buffers are written in several ops.
const MAX_OP_LEN: u32 = 1 << 30;

type Job = (WriteRequest, oneshot::Sender<WriteOutcome>);

/// Writes through a per-disk `io_uring` from a dedicated thread. Requests may complete in any
/// order.
#[derive(Debug)]
pub struct UringEngine {
    /// `None` only while dropping.
    tx: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl UringEngine {
    /// Creates the ring and starts the thread `sluice-flush-<name>`.
    pub fn new(name: &str) -> io::Result<Self> {
        Self::with_config(name, RING_ENTRIES, MAX_OP_LEN)
    }

    /// `entries`: ring size (a power of two); `max_op_len`: longest write op, in bytes.
    pub(crate) fn with_config(name: &str, entries: u32, max_op_len: u32) -> io::Result<Self> {
        let mut ring = IoUring::new(entries)?;
        let capacity = ring.submission().capacity();
        let (tx, rx) = mpsc::channel();
        let driver = Driver {
            disk: name.to_owned(),
            ring,
            rx,
            closed: false,
            slots: Slots::default(),
            ready: VecDeque::new(),
            in_kernel: 0,
            capacity,
            max_op_len: max_op_len.max(1),
            cqes: Vec::with_capacity(capacity),
        };
        let thread = thread::Builder::new()
            .name(thread_name(name))
            .spawn(move || driver.run())?;
        Ok(UringEngine {
            tx: Some(tx),
            thread: Some(thread),
        })
    }
}

impl IoEngine for UringEngine {
    fn kind(&self) -> EngineKind {
        EngineKind::Uring
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

impl Drop for UringEngine {
    /// Closes the channel, lets the thread finish what is queued and in flight, and waits for it.
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Creates a small ring, checks the kernel knows `IORING_OP_WRITE`, and runs a no-op through it.
pub(super) fn probe() -> io::Result<()> {
    let context = |what: &str, err: io::Error| io::Error::new(err.kind(), format!("{what}: {err}"));
    let mut ring = IoUring::new(2).map_err(|err| context("io_uring_setup failed", err))?;
    let mut probe = Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(|err| context("io_uring opcode probe failed", err))?;
    if !probe.is_supported(opcode::Write::CODE) {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "kernel io_uring lacks IORING_OP_WRITE",
        ));
    }
    let nop = opcode::Nop::new().build().user_data(1);
    // SAFETY: a no-op references no memory.
    unsafe { ring.submission().push(&nop) }
        .map_err(|_| io::Error::other("io_uring submission queue full on a fresh ring"))?;
    loop {
        match ring.submit_and_wait(1) {
            Ok(_) => break,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(context("io_uring_enter failed", err)),
        }
    }
    let result = ring
        .completion()
        .next()
        .ok_or_else(|| io::Error::other("io_uring no-op did not complete"))?
        .result();
    if result < 0 {
        return Err(context(
            "io_uring no-op failed",
            io::Error::from_raw_os_error(-result),
        ));
    }
    Ok(())
}

/// One buffer's write op; `user_data` packs the two indices.
#[derive(Debug, Clone, Copy)]
struct Op {
    slot: u32,
    buf: u32,
}

impl Op {
    fn user_data(self) -> u64 {
        (u64::from(self.slot) << 32) | u64::from(self.buf)
    }

    fn from_user_data(data: u64) -> Self {
        Op {
            slot: (data >> 32) as u32,
            buf: data as u32,
        }
    }
}

/// A request being written.
struct InFlight {
    request: WriteRequest,
    done: oneshot::Sender<WriteOutcome>,
    /// Per buffer: file offset of its first byte, bytes written so far.
    progress: Vec<(u64, usize)>,
    /// Ops of this request in the kernel.
    in_kernel: usize,
    /// Non-empty buffers not fully written yet.
    unfinished: usize,
    error: Option<io::Error>,
}

impl InFlight {
    /// Makes sure the memory and file the kernel may still use outlive this request, for when
    /// the request must be handed back or dropped with ops still in the kernel (only if the
    /// ring itself failed): one reference to each is leaked.
    fn leak_for_kernel(&self) {
        if self.in_kernel > 0 {
            mem::forget(self.request.file.clone());
            self.request
                .bufs
                .iter()
                .for_each(|buf| mem::forget(buf.clone()));
        }
    }
}

/// Requests in progress, indexed by slot; slots are reused.
#[derive(Default)]
struct Slots {
    entries: Vec<Option<InFlight>>,
    free: Vec<u32>,
    len: usize,
}

impl Slots {
    fn insert(&mut self, request: InFlight) -> u32 {
        self.len += 1;
        match self.free.pop() {
            Some(slot) => {
                self.entries[slot as usize] = Some(request);
                slot
            }
            None => {
                self.entries.push(Some(request));
                (self.entries.len() - 1) as u32
            }
        }
    }

    fn get_mut(&mut self, slot: u32) -> Option<&mut InFlight> {
        self.entries.get_mut(slot as usize)?.as_mut()
    }

    fn remove(&mut self, slot: u32) -> Option<InFlight> {
        let request = self.entries.get_mut(slot as usize)?.take()?;
        self.len -= 1;
        self.free.push(slot);
        Some(request)
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn drain(&mut self) -> impl Iterator<Item = InFlight> + '_ {
        self.len = 0;
        self.free.clear();
        self.entries.drain(..).flatten()
    }
}

impl Drop for Slots {
    /// Normally empty by now; if not (the thread is unwinding), the kernel may still read
    /// what is in flight.
    fn drop(&mut self) {
        self.entries
            .iter()
            .flatten()
            .for_each(InFlight::leak_for_kernel);
    }
}

/// The engine thread's state.
struct Driver {
    /// The disk's name, for logs.
    disk: String,
    ring: IoUring,
    rx: mpsc::Receiver<Job>,
    /// The engine handle is gone: finish what is admitted, then exit.
    closed: bool,
    slots: Slots,
    /// Ops waiting for room in the submission queue.
    ready: VecDeque<Op>,
    /// Ops pushed to the submission queue whose completion has not been reaped.
    in_kernel: usize,
    /// Most ops in the kernel at once: the submission queue size.
    capacity: usize,
    max_op_len: u32,
    /// Completions reaped in one turn: (user_data, result).
    cqes: Vec<(u64, i32)>,
}

impl Driver {
    fn run(mut self) {
        while !(self.closed && self.slots.is_empty()) {
            self.admit();
            self.fill();
            if self.in_kernel == 0 {
                continue;
            }
            if let Err(err) = self.submit_and_wait() {
                error!(disk = %self.disk, error = %err, "io_uring failed, failing all writes of this disk");
                self.fail_all(err);
                return;
            }
            self.reap();
        }
    }

    /// Takes new requests: blocks while idle, else drains the channel without blocking while
    /// there is room in `ready`.
    fn admit(&mut self) {
        if self.slots.is_empty() && !self.closed {
            match self.rx.recv() {
                Ok(job) => self.start(job),
                Err(_) => self.closed = true,
            }
        }
        while !self.closed && self.ready.len() < self.capacity {
            match self.rx.try_recv() {
                Ok(job) => self.start(job),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => self.closed = true,
            }
        }
    }

    /// Admits one request, queueing one op per non-empty buffer.
    fn start(&mut self, (request, done): Job) {
        if let Err(err) = request.check_range() {
            return reply(done, request, Err(err));
        }
        let Ok(count) = u32::try_from(request.bufs.len()) else {
            let err = io::Error::new(
                io::ErrorKind::InvalidInput,
                "too many buffers in one request",
            );
            return reply(done, request, Err(err));
        };
        let ops: Vec<u32> = (0..count)
            .filter(|&i| {
                request
                    .bufs
                    .get(i as usize)
                    .is_some_and(|buf| !buf.is_empty())
            })
            .collect();
        if ops.is_empty() {
            return reply(done, request, Ok(()));
        }
        let mut start = request.offset;
        let progress = request
            .bufs
            .iter()
            .map(|buf| {
                let at = start;
                start += buf.len() as u64;
                (at, 0)
            })
            .collect();
        let unfinished = ops.len();
        let slot = self.slots.insert(InFlight {
            request,
            done,
            progress,
            in_kernel: 0,
            unfinished,
            error: None,
        });
        self.ready
            .extend(ops.into_iter().map(|buf| Op { slot, buf }));
    }

    /// Moves ops from `ready` into the submission queue while the kernel has room.
    fn fill(&mut self) {
        let mut sq = self.ring.submission();
        while self.in_kernel < self.capacity {
            let Some(op) = self.ready.pop_front() else {
                break;
            };
            let Some(request) = self.slots.get_mut(op.slot) else {
                continue;
            };
            let (Some(buf), Some(&(start, written))) = (
                request.request.bufs.get(op.buf as usize),
                request.progress.get(op.buf as usize),
            ) else {
                continue;
            };
            let rest = buf.get(written..).unwrap_or_default();
            let len = rest.len().min(self.max_op_len as usize) as u32;
            let sqe = opcode::Write::new(
                types::Fd(request.request.file.as_raw_fd()),
                rest.as_ptr(),
                len,
            )
            .offset(start + written as u64)
            .build()
            .user_data(op.user_data());
            // SAFETY: the op reads `len` bytes at `rest.as_ptr()` and writes to the file's fd. Both
            // belong to the request, which the slot table owns until this op's completion has been
            // reaped (`in_kernel` counts it; a request leaves the table only at zero, and the
            // table leaks what it drops with ops still in the kernel). `Bytes` never moves or
            // mutates its memory while we hold a reference, and the `Arc<File>` keeps the fd open.
            if unsafe { sq.push(&sqe) }.is_err() {
                self.ready.push_front(op);
                break;
            }
            request.in_kernel += 1;
            self.in_kernel += 1;
        }
    }

    /// Submits what is queued and waits for at least one completion. Transient failures
    /// (`EINTR`, `EAGAIN`, `EBUSY`) count as success: the caller reaps what is there and comes
    /// back. Anything else means the ring is unusable.
    fn submit_and_wait(&mut self) -> io::Result<()> {
        match self.ring.submit_and_wait(1) {
            Ok(_) => Ok(()),
            Err(err)
                if matches!(
                    err.raw_os_error(),
                    Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)
                ) =>
            {
                Ok(())
            }
            Err(err) => Err(err),
        }
    }

    fn reap(&mut self) {
        self.cqes.extend(
            self.ring
                .completion()
                .map(|cqe| (cqe.user_data(), cqe.result())),
        );
        let mut cqes = mem::take(&mut self.cqes);
        for (data, result) in cqes.drain(..) {
            self.in_kernel = self.in_kernel.saturating_sub(1);
            self.complete_op(Op::from_user_data(data), result);
        }
        self.cqes = cqes;
    }

    /// Accounts one completion and sends the outcome if that was the request's last op.
    fn complete_op(&mut self, op: Op, result: i32) {
        let Some(request) = self.slots.get_mut(op.slot) else {
            error!(
                disk = %self.disk,
                user_data = op.user_data(),
                "io_uring completion for an unknown request"
            );
            return;
        };
        request.in_kernel = request.in_kernel.saturating_sub(1);
        let buf_len = request
            .request
            .bufs
            .get(op.buf as usize)
            .map_or(0, Bytes::len);
        let failed = match (result, request.progress.get_mut(op.buf as usize)) {
            (0, _) => Some(io::Error::new(
                io::ErrorKind::WriteZero,
                "write returned zero bytes",
            )),
            (errno, _) if errno < 0 && matches!(-errno, libc::EINTR | libc::EAGAIN) => {
                if request.error.is_none() {
                    self.ready.push_front(op);
                }
                None
            }
            (errno, _) if errno < 0 => Some(io::Error::from_raw_os_error(-errno)),
            (n, Some((_, written))) => {
                *written = (*written + n as usize).min(buf_len);
                if *written == buf_len {
                    request.unfinished = request.unfinished.saturating_sub(1);
                } else if request.error.is_none() {
                    self.ready.push_front(op);
                }
                None
            }
            (_, None) => None,
        };
        if let Some(err) = failed {
            if request.error.is_none() {
                request.error = Some(err);
                self.ready.retain(|queued| queued.slot != op.slot);
            }
        }
        if request.in_kernel == 0 && (request.error.is_some() || request.unfinished == 0) {
            if let Some(InFlight {
                request,
                done,
                error,
                ..
            }) = self.slots.remove(op.slot)
            {
                reply(done, request, error.map_or(Ok(()), Err));
            }
        }
    }

    /// The ring is broken: fail every admitted request. Ones with ops still in the kernel
    /// leak a reference to their memory first, since the kernel may still read it.
    fn fail_all(&mut self, err: io::Error) {
        self.ready.clear();
        for request in self.slots.drain() {
            request.leak_for_kernel();
            // One copy per request, keeping the errno when there is one.
            let copy = match err.raw_os_error() {
                Some(errno) => io::Error::from_raw_os_error(errno),
                None => io::Error::new(err.kind(), format!("io_uring failed: {err}")),
            };
            reply(request.done, request.request, Err(copy));
        }
    }
}
