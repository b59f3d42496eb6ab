//! Helpers shared by the fuzz targets in `fuzz_targets/`.
//!
//! - [`limits`]: the frame limits a target decodes with, picked by one input byte (the
//!   production defaults or small ones, so the "too large" paths are reachable).
//! - [`ChunkedReader`] and [`block_on`]: drive the async [`FrameReader`] over an in-memory stream
//!   that hands out bytes in fuzzer-chosen pieces.
//! - [`partition`]: a real worker [`Partition`] that never flushes, for feeding push slices to
//!   the same `append` the push server calls.
//! - [`Input`]: splits one fuzz input into the fields a target needs.
//!
//! [`FrameReader`]: sluice_protocol::connection::FrameReader
//! [`Partition`]: sluice_worker::storage::partition::Partition

use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker};

use sluice_protocol::frame::FrameLimits;
use sluice_protocol::ShuffleKey;
use sluice_worker::storage::disk::{Disk, FlushQueue};
use sluice_worker::storage::layout::{LocationFiles, LocationId};
use sluice_worker::storage::partition::Partition;
use tokio::io::{AsyncRead, ReadBuf};

/// Small limits: small enough that random heads hit `HeaderTooLarge` and `BodyTooLarge`.
pub const SMALL_LIMITS: FrameLimits = FrameLimits {
    max_header: 64,
    max_body: 1024,
};

/// The production limits for an even `selector`, [`SMALL_LIMITS`] for an odd one.
pub fn limits(selector: u8) -> FrameLimits {
    if selector % 2 == 0 {
        FrameLimits::default()
    } else {
        SMALL_LIMITS
    }
}

/// Reads the fields of a fuzz input front to back; missing bytes read as zero.
#[derive(Debug)]
pub struct Input<'a> {
    rest: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Input<'a> {
        Input { rest: data }
    }

    pub fn u8(&mut self) -> u8 {
        self.array::<1>()[0]
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_be_bytes(self.array())
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_be_bytes(self.array())
    }

    pub fn u64(&mut self) -> u64 {
        u64::from_be_bytes(self.array())
    }

    /// The next `len` bytes (fewer at the end of the input).
    pub fn bytes(&mut self, len: usize) -> &'a [u8] {
        let (taken, rest) = self.rest.split_at(len.min(self.rest.len()));
        self.rest = rest;
        taken
    }

    /// Everything not read yet.
    pub fn rest(self) -> &'a [u8] {
        self.rest
    }

    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let taken = self.bytes(N);
        out[..taken.len()].copy_from_slice(taken);
        out
    }
}

/// An in-memory stream that returns `data` in pieces whose sizes cycle through `pieces`
/// (a piece size of 0 counts as 1), never pending.
#[derive(Debug)]
pub struct ChunkedReader<'a> {
    data: &'a [u8],
    pieces: &'a [u8],
    next_piece: usize,
}

impl<'a> ChunkedReader<'a> {
    pub fn new(data: &'a [u8], pieces: &'a [u8]) -> ChunkedReader<'a> {
        ChunkedReader {
            data,
            pieces,
            next_piece: 0,
        }
    }
}

impl AsyncRead for ChunkedReader<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let piece = match self.pieces.get(self.next_piece % self.pieces.len().max(1)) {
            // Up to 255 * 64 bytes per read, so large frames arrive in a few reads too.
            Some(&size) => usize::from(size.max(1)) * if size > 128 { 64 } else { 1 },
            None => usize::MAX,
        };
        self.next_piece += 1;
        let len = piece.min(buf.remaining()).min(self.data.len());
        let (now, later) = self.data.split_at(len);
        buf.put_slice(now);
        self.data = later;
        Poll::Ready(Ok(()))
    }
}

/// Runs a future that never waits on anything but in-memory I/O to completion. Panics if it
/// is still pending after many polls (that would be a hang in the real server).
pub fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..1_000 {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
    }
    panic!("future over an in-memory stream did not complete");
}

struct Fixture {
    /// The disk's flush queue, kept so queuing never fails; no flusher runs and no job is queued.
    _queue: FlushQueue,
    disk: Arc<Disk>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let engine = sluice_worker::storage::engine::open_engine(
            sluice_worker::storage::engine::EngineChoice::Sync,
            "fuzz",
        )
        .expect("sync write engine");
        let (disk, queue) = Disk::new(std::env::temp_dir().join("sluice-fuzz"), engine);
        Fixture {
            _queue: queue,
            disk: Arc::new(disk),
        }
    })
}

/// A fresh open partition location. Nothing is written to disk as long as appends pass a flush
/// threshold above what they append.
pub fn partition(shuffle: &ShuffleKey, partition: u32, epoch: u32) -> Arc<Partition> {
    let fixture = fixture();
    let id = LocationId::new(partition, epoch, 0).expect("the primary role");
    let files = LocationFiles::new(&fixture.disk.path, shuffle, id);
    Arc::new(Partition::new(
        format!("{shuffle}/{}", id.stem()),
        fixture.disk.clone(),
        files,
    ))
}
