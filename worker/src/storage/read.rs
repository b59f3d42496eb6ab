//! The read side of committed locations: listing their chunks and sending them.
//!
//! [`open_stream`] reads a location's batch index in pages of [`INDEX_PAGE`] entries, never
//! whole, and answers at most [`MAX_CHUNKS`] chunks (or [`MAX_RANGES`] ranges) per request with
//! the index offset to continue from, so neither memory nor an answer grows with a location's
//! batch count; [`open_streams`] does the same for many locations of a batched open within one
//! shared budget. [`chunk_source`] (and [`chunk_sources`] for a batched fetch) validates a chunk's ranges against the committed length and
//! opens the data file off the runtime; [`send_file`] sends it with `sendfile(2)` on a plain
//! connection, and [`read_piece`] reads it a piece at a time for a TLS connection (whose bytes
//! must pass through rustls, so `sendfile` cannot be used).

use std::os::unix::fs::FileExt;
use std::sync::Arc;

use sluice_protocol::pb;
use tokio::net::TcpStream;

use super::index::{self, ENTRY_LEN};
use super::partition::Partition;
use crate::error::{WorkerError, WorkerResult};

/// Index entries read from disk at a time.
pub const INDEX_PAGE: usize = 16 * 1024;
/// Most chunks in one `StreamOpened` answer.
pub const MAX_CHUNKS: usize = 4096;
/// Most ranges in one `StreamOpened` answer (map-range reads of interleaved maps make many).
pub const MAX_RANGES: usize = 64 * 1024;

/// What one answer may still list: [`MAX_CHUNKS`] chunks and [`MAX_RANGES`] ranges, shared by
/// every location of a batched open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageBudget {
    pub chunks: usize,
    pub ranges: usize,
}

impl Default for PageBudget {
    fn default() -> Self {
        PageBudget {
            chunks: MAX_CHUNKS,
            ranges: MAX_RANGES,
        }
    }
}

/// One page of a committed location's chunks, starting at `index_offset` of its index.
pub async fn open_stream(
    partition: Arc<Partition>,
    header: pb::OpenStreamHeader,
    chunk_size: u64,
) -> WorkerResult<pb::StreamOpenedHeader> {
    tokio::task::spawn_blocking(move || {
        page(&partition, &header, chunk_size, &mut PageBudget::default())
    })
    .await
    .map_err(|e| WorkerError::io("index task", std::io::Error::other(e)))?
}

/// One page of each of many locations (a batched open), in one task off the runtime. A location
/// that could not be found (`Err` in `locations`) or read keeps its own error. The pages share
/// one [`PageBudget`]: the first location gets a whole page; one found when the budget is spent
/// is answered with no chunks and `next_index_offset` at its `index_offset` (ask again).
pub async fn open_streams(
    locations: Vec<(WorkerResult<Arc<Partition>>, pb::OpenStreamHeader)>,
    chunk_size: u64,
) -> WorkerResult<Vec<WorkerResult<pb::StreamOpenedHeader>>> {
    tokio::task::spawn_blocking(move || {
        let mut budget = PageBudget::default();
        locations
            .into_iter()
            .map(|(partition, header)| {
                partition.and_then(|p| page(&p, &header, chunk_size, &mut budget))
            })
            .collect()
    })
    .await
    .map_err(|e| WorkerError::io("index task", std::io::Error::other(e)))
}

/// Where a committed location's index is read from.
enum IndexSource {
    /// A small index, kept in memory.
    Memory(bytes::Bytes),
    File(std::fs::File),
}

/// Reads one page of `partition`'s chunks (blocking), within `budget`, and takes what it listed
/// from the budget.
fn page(
    partition: &Partition,
    header: &pb::OpenStreamHeader,
    chunk_size: u64,
    budget: &mut PageBudget,
) -> WorkerResult<pb::StreamOpenedHeader> {
    let committed = partition.committed_files()?;
    if committed.files.is_none() && committed.dfs.is_none() {
        return Ok(pb::StreamOpenedHeader::default());
    }
    let (index_len, data_len) = (committed.index_len, committed.data_len);
    let start = header.index_offset;
    if start % ENTRY_LEN as u64 != 0 || start > index_len {
        return Err(WorkerError::InvalidRequest(format!(
            "index offset {start} is not an entry boundary of {} ({index_len} bytes)",
            partition.name()
        )));
    }
    let name = partition.name();
    // A small index (or one of a location on the DFS) is served from memory; a larger one is
    // read from its file a page at a time.
    let source = match (committed.index, &committed.files) {
        (Some(index), _) => IndexSource::Memory(index),
        (None, Some(files)) => IndexSource::File(
            std::fs::File::open(&files.index)
                .map_err(|e| WorkerError::io(format!("opening the index of {name}"), e))?,
        ),
        (None, None) => {
            return Err(WorkerError::Disk {
                location: name.to_string(),
                reason: "no index".into(),
            })
        }
    };
    let mut chunker = index::Chunker::new(header.start_map, header.end_map, chunk_size);
    let mut page = Vec::new();
    let mut at = start;
    let mut next_index_offset = None;
    while at < index_len {
        if chunker.chunks() >= budget.chunks || chunker.ranges() >= budget.ranges {
            next_index_offset = Some(at);
            break;
        }
        let len = (index_len - at).min((INDEX_PAGE * ENTRY_LEN) as u64) as usize;
        let bytes =
            match &source {
                IndexSource::Memory(index) => index
                    .get(at as usize..at as usize + len)
                    .ok_or_else(|| WorkerError::Disk {
                        location: name.to_string(),
                        reason: format!("its index holds {} bytes, not {index_len}", index.len()),
                    })?,
                IndexSource::File(file) => {
                    page.resize(len, 0);
                    file.read_exact_at(&mut page, at)
                        .map_err(|e| WorkerError::io(format!("reading the index of {name}"), e))?;
                    &page[..]
                }
            };
        let entries = index::decode(bytes, data_len).map_err(|reason| WorkerError::Disk {
            location: name.to_string(),
            reason,
        })?;
        for entry in &entries {
            chunker.push(entry);
        }
        at += len as u64;
    }
    budget.chunks = budget.chunks.saturating_sub(chunker.chunks());
    budget.ranges = budget.ranges.saturating_sub(chunker.ranges());
    Ok(pb::StreamOpenedHeader {
        chunks: chunker.finish(),
        file_length: data_len,
        next_index_offset,
    })
}

/// A chunk to send: the committed data file and the validated ranges to send from it. The file
/// is opened only when its bytes are sent ([`open_data`]): a batched answer lists up to a
/// thousand chunks and a connection queues several answers, so holding their descriptors
/// meanwhile ran a worker out of them.
#[derive(Debug)]
pub struct ChunkSource {
    /// `None` when the location holds no data (then `ranges` is empty), or is on the DFS.
    pub data: Option<std::path::PathBuf>,
    /// The data object, when the location is on the DFS.
    pub dfs: Option<super::dfs::DfsObject>,
    pub ranges: Vec<pb::Range>,
    pub len: u64,
}

/// Checks that every range of `chunk` lies inside the committed data file and that the chunk
/// fits in one frame, and that the data file is there (off the runtime).
pub async fn chunk_source(
    partition: Arc<Partition>,
    chunk: pb::Chunk,
    max_len: u64,
) -> WorkerResult<ChunkSource> {
    tokio::task::spawn_blocking(move || open_chunk(&partition, chunk, max_len))
        .await
        .map_err(|e| WorkerError::io("chunk task", std::io::Error::other(e)))?
}

/// [`chunk_source`] for many chunks (a batched fetch), in one task off the runtime. A chunk
/// whose location could not be found (`Err` in `chunks`) or read keeps its own error.
pub async fn chunk_sources(
    chunks: Vec<WorkerResult<(Arc<Partition>, pb::Chunk)>>,
    max_len: u64,
) -> WorkerResult<Vec<WorkerResult<ChunkSource>>> {
    tokio::task::spawn_blocking(move || {
        chunks
            .into_iter()
            .map(|chunk| {
                let (partition, chunk) = chunk?;
                open_chunk(&partition, chunk, max_len)
            })
            .collect()
    })
    .await
    .map_err(|e| WorkerError::io("chunk task", std::io::Error::other(e)))
}

/// The bytes a chunk names, `u64::MAX` when their sum overflows.
pub fn chunk_len(chunk: &pb::Chunk) -> u64 {
    chunk
        .ranges
        .iter()
        .try_fold(0u64, |sum, r| sum.checked_add(r.length))
        .unwrap_or(u64::MAX)
}

/// Validates `chunk` against the committed data file and opens the file (blocking).
fn open_chunk(partition: &Partition, chunk: pb::Chunk, max_len: u64) -> WorkerResult<ChunkSource> {
    let committed = partition.committed_files()?;
    let total = chunk_len(&chunk);
    if total > max_len {
        return Err(WorkerError::InvalidRequest(format!(
            "chunk of {total} bytes exceeds the limit of {max_len}"
        )));
    }
    for range in &chunk.ranges {
        if range.offset.saturating_add(range.length) > committed.data_len {
            return Err(WorkerError::InvalidRequest(format!(
                "range {}+{} is outside {} ({} bytes)",
                range.offset,
                range.length,
                partition.name(),
                committed.data_len
            )));
        }
    }
    if let (Some(dfs), 1..) = (&committed.dfs, total) {
        return Ok(ChunkSource {
            data: None,
            dfs: Some(dfs.clone()),
            ranges: chunk.ranges,
            len: total,
        });
    }
    let data = match (committed.files, total) {
        (Some(files), 1..) => {
            // Checked now, so a missing file is this chunk's own error in the answer.
            std::fs::metadata(&files.data).map_err(|e| WorkerError::Disk {
                location: partition.name().to_string(),
                reason: format!("cannot open its data file: {e}"),
            })?;
            Some(files.data)
        }
        _ => None,
    };
    Ok(ChunkSource {
        data,
        dfs: None,
        ranges: chunk.ranges,
        len: total,
    })
}

/// Opens a chunk's data file for sending (off the runtime).
pub async fn open_data(path: std::path::PathBuf) -> std::io::Result<Arc<std::fs::File>> {
    tokio::task::spawn_blocking(move || std::fs::File::open(path).map(Arc::new))
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
}

/// Sends `len` bytes of `file` from `offset` to `socket` with `sendfile(2)`.
pub async fn send_file(
    socket: &TcpStream,
    file: &std::fs::File,
    mut offset: u64,
    mut len: u64,
) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    while len > 0 {
        socket.writable().await?;
        let sent = socket.try_io(tokio::io::Interest::WRITABLE, || {
            let mut at = libc::off_t::try_from(offset).map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "offset too large")
            })?;
            let count = len.min(1 << 30) as usize;
            // SAFETY: both descriptors are open for the duration of the call (the caller holds
            // the socket and the file), and `at` is a valid, exclusively borrowed offset.
            let sent =
                unsafe { libc::sendfile(socket.as_raw_fd(), file.as_raw_fd(), &mut at, count) };
            if sent < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(sent as u64)
            }
        });
        match sent {
            Ok(0) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "data file is shorter than its committed length",
                ))
            }
            Ok(sent) => {
                offset += sent;
                len -= sent;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads `len` bytes of `file` from `offset` into `buf` (resized to `len`) with `pread`, off the
/// runtime, and gives the buffer back for the next piece (a connection reuses one). A file
/// shorter than its committed length is an error.
pub async fn read_piece(
    file: std::sync::Arc<std::fs::File>,
    mut buf: Vec<u8>,
    offset: u64,
    len: usize,
) -> std::io::Result<Vec<u8>> {
    tokio::task::spawn_blocking(move || {
        buf.resize(len, 0);
        match file.read_exact_at(&mut buf, offset) {
            Ok(()) => Ok(buf),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "data file is shorter than its committed length",
            )),
            Err(e) => Err(e),
        }
    })
    .await
    .unwrap_or_else(|e| Err(std::io::Error::other(e)))
}
