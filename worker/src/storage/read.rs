//! The read side of committed locations: listing their chunks and sending them.
//!
//! [`open_stream`] reads a location's batch index in pages of [`INDEX_PAGE`] entries, never
//! whole, and answers at most [`MAX_CHUNKS`] chunks (or [`MAX_RANGES`] ranges) per request with
//! the index offset to continue from, so neither memory nor an answer grows with a location's
//! batch count. [`chunk_source`] validates a chunk's ranges against the committed length and
//! opens the data file off the runtime; [`send_file`] sends it with `sendfile(2)` on a plain
//! connection, and [`read_piece`] reads it a piece at a time for a TLS connection (whose bytes
//! must pass through rustls, so `sendfile` cannot be used).

use std::os::unix::fs::FileExt;

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

/// One page of a committed location's chunks, starting at `index_offset` of its index.
pub async fn open_stream(
    partition: &Partition,
    header: &pb::OpenStreamHeader,
    chunk_size: u64,
) -> WorkerResult<pb::StreamOpenedHeader> {
    let committed = partition.committed_files()?;
    let Some(files) = committed.files else {
        return Ok(pb::StreamOpenedHeader::default());
    };
    let (index_len, data_len) = (committed.index_len, committed.data_len);
    let start = header.index_offset;
    if start % ENTRY_LEN as u64 != 0 || start > index_len {
        return Err(WorkerError::InvalidRequest(format!(
            "index offset {start} is not an entry boundary of {} ({index_len} bytes)",
            partition.name()
        )));
    }
    let name = partition.name().to_string();
    let (start_map, end_map) = (header.start_map, header.end_map);
    tokio::task::spawn_blocking(move || {
        let file = std::fs::File::open(&files.index)
            .map_err(|e| WorkerError::io(format!("opening the index of {name}"), e))?;
        let mut chunker = index::Chunker::new(start_map, end_map, chunk_size);
        let mut page = Vec::new();
        let mut at = start;
        while at < index_len {
            if chunker.chunks() >= MAX_CHUNKS || chunker.ranges() >= MAX_RANGES {
                return Ok(pb::StreamOpenedHeader {
                    chunks: chunker.finish(),
                    file_length: data_len,
                    next_index_offset: Some(at),
                });
            }
            let len = (index_len - at).min((INDEX_PAGE * ENTRY_LEN) as u64) as usize;
            page.resize(len, 0);
            file.read_exact_at(&mut page, at)
                .map_err(|e| WorkerError::io(format!("reading the index of {name}"), e))?;
            let entries = index::decode(&page, data_len).map_err(|reason| WorkerError::Disk {
                location: name.clone(),
                reason,
            })?;
            for entry in &entries {
                chunker.push(entry);
            }
            at += len as u64;
        }
        Ok(pb::StreamOpenedHeader {
            chunks: chunker.finish(),
            file_length: data_len,
            next_index_offset: None,
        })
    })
    .await
    .map_err(|e| WorkerError::io("index task", std::io::Error::other(e)))?
}

/// A chunk to send: the committed data file and the validated ranges to send from it.
#[derive(Debug)]
pub struct ChunkSource {
    /// `None` when the location holds no data (then `ranges` is empty).
    pub file: Option<std::fs::File>,
    pub ranges: Vec<pb::Range>,
    pub len: u64,
}

/// Checks that every range of `chunk` lies inside the committed data file and that the chunk
/// fits in one frame, then opens the data file (off the runtime).
pub async fn chunk_source(
    partition: &Partition,
    chunk: pb::Chunk,
    max_len: u64,
) -> WorkerResult<ChunkSource> {
    let committed = partition.committed_files()?;
    let total = chunk
        .ranges
        .iter()
        .try_fold(0u64, |sum, r| sum.checked_add(r.length))
        .unwrap_or(u64::MAX);
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
    let file = match (committed.files, total) {
        (Some(files), 1..) => {
            let opened = tokio::task::spawn_blocking(move || std::fs::File::open(&files.data))
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)));
            Some(opened.map_err(|e| WorkerError::Disk {
                location: partition.name().to_string(),
                reason: format!("cannot open its data file: {e}"),
            })?)
        }
        _ => None,
    };
    Ok(ChunkSource {
        file,
        ranges: chunk.ranges,
        len: total,
    })
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
