//! The push and fetch servers: accept loops and per-connection frame loops.
//!
//! Push connections carry `PushData`/`PushMergedData` from writers and `Reserve`/`Commit`/
//! `Destroy` from the master. Pushes are handled in arrival order on the connection's own task;
//! before reading each frame the loop waits for room in the memory budget, so a worker over
//! budget stops reading (TCP backpressure) and, past `busy_wait`, answers `Busy`. Fetch
//! connections serve `OpenStream` and `FetchChunk` concurrently (bounded per connection).
//! Answers go through a writer task. A malformed frame closes only its connection.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use sluice_protocol::connection::{write_queued, FrameReader, FrameWriter, OutFrame, ReadError};
use sluice_protocol::frame::{Frame, MessageType};
use sluice_protocol::{pb, ShuffleKey};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::error::{WorkerError, WorkerResult};
use crate::storage;
use crate::Shared;

#[derive(Debug, Clone, Copy)]
pub enum Port {
    Push,
    Fetch,
}

pub async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    port: Port,
    shutdown: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.cancelled() => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                let shared = shared.clone();
                let shutdown = shutdown.clone();
                tokio::spawn(async move {
                    let peer = peer.to_string();
                    match port {
                        Port::Push => push_connection(stream, &peer, shared, shutdown).await,
                        Port::Fetch => fetch_connection(stream, &peer, shared, shutdown).await,
                    }
                });
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, ?port, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// Splits a connection into a frame reader and a channel to a writer task.
fn split(
    stream: TcpStream,
    shared: &Shared,
) -> (
    FrameReader<tokio::net::tcp::OwnedReadHalf>,
    mpsc::Sender<OutFrame>,
    tokio::task::JoinHandle<()>,
) {
    let (read_half, write_half) = stream.into_split();
    let reader = FrameReader::new(read_half, shared.limits);
    let (tx, rx) = mpsc::channel::<OutFrame>(256);
    let writer = tokio::spawn(async move {
        let _ = write_queued(FrameWriter::new(write_half), rx).await;
    });
    (reader, tx, writer)
}

/// Reads the next frame, logging why a connection ends abnormally.
async fn next_frame(
    reader: &mut FrameReader<tokio::net::tcp::OwnedReadHalf>,
    peer: &str,
    shutdown: &CancellationToken,
) -> Option<Frame> {
    let read = tokio::select! {
        read = reader.read_frame() => read,
        _ = shutdown.cancelled() => return None,
    };
    match read {
        Ok(frame) => frame,
        Err(ReadError::Io(e)) => {
            tracing::debug!(peer, error = %e, "connection error");
            None
        }
        Err(e) => {
            tracing::warn!(peer, error = %e, "closing connection: malformed data");
            None
        }
    }
}

fn error_frame(request_id: u64, error: &WorkerError) -> OutFrame {
    OutFrame::error(request_id, error.code(), error.to_string())
}

fn reply<T>(request_id: u64, result: WorkerResult<T>, ok: impl FnOnce(T) -> OutFrame) -> OutFrame {
    match result {
        Ok(value) => ok(value),
        Err(e) => error_frame(request_id, &e),
    }
}

fn ack(request_id: u64) -> OutFrame {
    OutFrame::new(MessageType::Ack, request_id, &pb::Ack {})
}

async fn push_connection(
    stream: TcpStream,
    peer: &str,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    let (mut reader, tx, writer) = split(stream, &shared);
    loop {
        let room = shared
            .store
            .memory()
            .wait_below(shared.config.busy_wait)
            .await;
        let Some(frame) = next_frame(&mut reader, peer, &shutdown).await else {
            break;
        };
        let id = frame.request_id;
        let answer = match frame.kind {
            MessageType::PushData | MessageType::PushMergedData => {
                match handle_push(&shared, frame, room) {
                    Ok(forwards) if forwards.is_empty() => ack(id),
                    Ok(forwards) => {
                        // Ack only once every replica acked; keep reading meanwhile.
                        let (shared, tx) = (shared.clone(), tx.clone());
                        tokio::spawn(async move {
                            let answer = forward_to_replicas(&shared, id, forwards).await;
                            let _ = tx.send(answer).await;
                        });
                        continue;
                    }
                    Err(e) => {
                        tracing::debug!(peer, error = %e, "push refused");
                        error_frame(id, &e)
                    }
                }
            }
            MessageType::Reserve => reply(id, handle_reserve(&shared, &frame), |()| ack(id)),
            MessageType::Commit | MessageType::Destroy => {
                let (shared, tx) = (shared.clone(), tx.clone());
                tokio::spawn(async move {
                    let answer = if frame.kind == MessageType::Commit {
                        reply(id, handle_commit(&shared, &frame).await, |committed| {
                            OutFrame::new(MessageType::Committed, id, &committed)
                        })
                    } else {
                        reply(id, handle_destroy(&shared, &frame).await, |()| ack(id))
                    };
                    let _ = tx.send(answer).await;
                });
                continue;
            }
            other => error_frame(
                id,
                &WorkerError::InvalidRequest(format!("{other:?} is not served on the push port")),
            ),
        };
        if tx.send(answer).await.is_err() {
            break;
        }
    }
    drop(tx);
    let _ = writer.await;
}

/// A push a primary sends on to a replica: the replica's address and the frame.
type Forward = (String, OutFrame);

/// Appends a push's slices to their partitions. On a primary whose partitions have replicas,
/// returns the pushes to forward before the client may be acked.
fn handle_push(shared: &Shared, frame: Frame, room: bool) -> WorkerResult<Vec<Forward>> {
    let memory = shared.store.memory();
    let body_len = frame.body.len() as u64;
    memory.acquire(body_len);
    let mut kept = 0u64;
    let result = append_push(shared, &frame, room, &mut kept);
    memory.release(body_len - kept);
    result
}

fn append_push(
    shared: &Shared,
    frame: &Frame,
    room: bool,
    kept: &mut u64,
) -> WorkerResult<Vec<Forward>> {
    let header: pb::PushHeader = frame.decode_header("push")?;
    let memory = shared.store.memory();
    // Replication traffic may use headroom above the budget, so a pipeline of primaries
    // forwarding to each other cannot deadlock on full budgets.
    let replica = header.role == pb::Role::Replica as i32;
    let admitted = room || (replica && memory.has_headroom());
    if !admitted {
        return Err(WorkerError::Busy {
            used: memory.used(),
            budget: memory.budget(),
        });
    }
    let shuffle =
        ShuffleKey::from_pb(header.shuffle.as_ref()).map_err(WorkerError::InvalidRequest)?;
    let total: u64 = header.slices.iter().map(|s| u64::from(s.length)).sum();
    if total != frame.body.len() as u64 {
        return Err(WorkerError::InvalidRequest(format!(
            "slices add up to {total} bytes but the body has {}",
            frame.body.len()
        )));
    }
    let partitions = shared.store.get_many(
        &shuffle,
        header
            .slices
            .iter()
            .map(|s| (s.partition, s.epoch, header.role)),
    );
    let mut resolved = Vec::with_capacity(partitions.len());
    for (slice, partition) in header.slices.iter().zip(partitions) {
        let partition = partition.ok_or_else(|| {
            WorkerError::NotFound(format!(
                "{shuffle} partition {} epoch {} is not reserved on this worker",
                slice.partition, slice.epoch
            ))
        })?;
        resolved.push(partition);
    }
    let threshold = shared.config.flush_buffer_size.as_u64();
    let size_cap = shared.config.partition_size_cap.as_u64();
    let mut offset = 0usize;
    let mut forwards: HashMap<String, (Vec<pb::PushSlice>, Vec<Bytes>)> = HashMap::new();
    for (slice, partition) in header.slices.iter().zip(resolved) {
        let end = offset + slice.length as usize;
        let bytes: Bytes = frame.body.slice(offset..end);
        offset = end;
        partition.append(bytes.clone(), threshold, size_cap)?;
        *kept += u64::from(slice.length);
        if let (false, Some(replica)) = (replica, partition.replica()) {
            let (slices, body) = forwards.entry(replica).or_default();
            slices.push(*slice);
            body.push(bytes);
        }
    }
    Ok(forwards
        .into_iter()
        .map(|(replica, (slices, body))| {
            let header = pb::PushHeader {
                shuffle: header.shuffle.clone(),
                slices,
                role: pb::Role::Replica as i32,
            };
            (
                replica,
                OutFrame::new(MessageType::PushMergedData, 0, &header).with_body(body),
            )
        })
        .collect())
}

/// Sends each forward to its replica; the answer to the client's push `id` is an ack only if
/// every replica acked. A failed replica is reported to the client, never hidden: the batch is
/// not acknowledged until both copies hold it.
async fn forward_to_replicas(shared: &Arc<Shared>, id: u64, forwards: Vec<Forward>) -> OutFrame {
    let mut calls = tokio::task::JoinSet::new();
    for (replica, frame) in forwards {
        let shared = shared.clone();
        calls.spawn(async move {
            let result = shared
                .peers
                .call(
                    &replica,
                    frame,
                    MessageType::Ack,
                    shared.config.replica_timeout,
                )
                .await;
            (replica, result)
        });
    }
    let mut failure = None;
    while let Some(joined) = calls.join_next().await {
        match joined {
            Ok((_, Ok(_))) => {}
            Ok((replica, Err(e))) => {
                failure = Some(format!("replica {replica} did not take the push: {e}"))
            }
            Err(e) => failure = Some(format!("forwarding task failed: {e}")),
        }
    }
    match failure {
        None => ack(id),
        Some(message) => {
            tracing::warn!(error = %message, "replication failed");
            OutFrame::error(id, sluice_protocol::ErrorCode::Unavailable, message)
        }
    }
}

fn handle_reserve(shared: &Shared, frame: &Frame) -> WorkerResult<()> {
    let header: pb::ReserveHeader = frame.decode_header("reserve")?;
    let shuffle =
        ShuffleKey::from_pb(header.shuffle.as_ref()).map_err(WorkerError::InvalidRequest)?;
    shared.store.reserve(&shuffle, &header.locations)
}

async fn handle_commit(shared: &Shared, frame: &Frame) -> WorkerResult<pb::CommittedHeader> {
    let header: pb::CommitHeader = frame.decode_header("commit")?;
    let shuffle =
        ShuffleKey::from_pb(header.shuffle.as_ref()).map_err(WorkerError::InvalidRequest)?;
    let locations = shared.store.commit(&shuffle, &header.locations).await;
    tracing::debug!(shuffle = %shuffle, locations = locations.len(), "committed");
    Ok(pb::CommittedHeader { locations })
}

async fn handle_destroy(shared: &Shared, frame: &Frame) -> WorkerResult<()> {
    let header: pb::DestroyHeader = frame.decode_header("destroy")?;
    sluice_protocol::ids::validate_app_id(&header.app_id).map_err(WorkerError::InvalidRequest)?;
    shared
        .store
        .destroy(&header.app_id, header.shuffle_id)
        .await;
    Ok(())
}

/// Requests served at once per fetch connection.
const FETCH_CONCURRENCY: usize = 8;

/// An answer on a fetch connection: a frame, or a chunk whose body is sent from the file.
enum FetchAnswer {
    Frame(OutFrame),
    Chunk {
        request_id: u64,
        source: storage::ChunkSource,
    },
}

async fn fetch_connection(
    stream: TcpStream,
    peer: &str,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    let (read_half, write_half) = stream.into_split();
    let mut reader = FrameReader::new(read_half, shared.limits);
    let (tx, rx) = mpsc::channel::<FetchAnswer>(FETCH_CONCURRENCY * 2);
    let peer_name = peer.to_string();
    let writer = tokio::spawn(async move {
        if let Err(e) = write_fetch_answers(FrameWriter::new(write_half), rx).await {
            tracing::debug!(peer = %peer_name, error = %e, "fetch connection closed while answering");
        }
    });
    let permits = Arc::new(Semaphore::new(FETCH_CONCURRENCY));
    while let Some(frame) = next_frame(&mut reader, peer, &shutdown).await {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let (shared, tx) = (shared.clone(), tx.clone());
        tokio::spawn(async move {
            let answer = handle_fetch(&shared, frame).await;
            drop(permit);
            let _ = tx.send(answer).await;
        });
    }
    drop(tx);
    let _ = writer.await;
}

/// Writes answers in the order they are ready. Chunk bodies go from the page cache to the socket
/// with `sendfile`, never through this process's memory. A failure inside a chunk's body leaves
/// the frame incomplete, so it ends the connection (the reader sees a broken fetch).
async fn write_fetch_answers(
    mut writer: FrameWriter<tokio::net::tcp::OwnedWriteHalf>,
    mut answers: mpsc::Receiver<FetchAnswer>,
) -> std::io::Result<()> {
    while let Some(answer) = answers.recv().await {
        match answer {
            FetchAnswer::Frame(frame) => writer.write_frame(&frame).await?,
            FetchAnswer::Chunk { request_id, source } => {
                let header = prost::Message::encode_to_vec(&pb::Ack {});
                let head = sluice_protocol::frame::FrameHead {
                    kind: MessageType::ChunkData,
                    flags: 0,
                    request_id,
                    header_len: header.len() as u32,
                    body_len: source.len as u32,
                    crc: 0,
                };
                writer.write_head(&head, &header).await?;
                writer.flush().await?;
                if let Some(file) = &source.file {
                    for range in &source.ranges {
                        send_file(writer.get_ref().as_ref(), file, range.offset, range.length)
                            .await?;
                    }
                }
            }
        }
        if answers.is_empty() {
            writer.flush().await?;
        }
    }
    writer.shutdown().await
}

/// Sends `len` bytes of `file` from `offset` to `socket` with `sendfile(2)`.
async fn send_file(
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

fn location(
    shared: &Shared,
    location: Option<&pb::LocationRef>,
) -> WorkerResult<Arc<storage::partition::Partition>> {
    let location =
        location.ok_or_else(|| WorkerError::InvalidRequest("missing location".into()))?;
    let shuffle =
        ShuffleKey::from_pb(location.shuffle.as_ref()).map_err(WorkerError::InvalidRequest)?;
    shared.store.get(
        &shuffle,
        (location.partition, location.epoch, location.role),
    )
}

async fn handle_fetch(shared: &Shared, frame: Frame) -> FetchAnswer {
    let id = frame.request_id;
    let answer = match frame.kind {
        MessageType::OpenStream => {
            let result = async {
                let header: pb::OpenStreamHeader = frame.decode_header("open stream")?;
                let partition = location(shared, header.location.as_ref())?;
                storage::open_stream(
                    &partition,
                    header.start_map,
                    header.end_map,
                    shared.config.chunk_size.as_u64(),
                )
                .await
            }
            .await;
            reply(id, result, |opened| {
                OutFrame::new(MessageType::StreamOpened, id, &opened)
            })
        }
        MessageType::FetchChunk => {
            let result = (|| {
                let header: pb::FetchChunkHeader = frame.decode_header("fetch chunk")?;
                let partition = location(shared, header.location.as_ref())?;
                storage::chunk_source(
                    &partition,
                    header.chunk.unwrap_or_default(),
                    u64::from(shared.limits.max_body),
                )
            })();
            match result {
                Ok(source) => {
                    return FetchAnswer::Chunk {
                        request_id: id,
                        source,
                    }
                }
                Err(e) => error_frame(id, &e),
            }
        }
        other => error_frame(
            id,
            &WorkerError::InvalidRequest(format!("{other:?} is not served on the fetch port")),
        ),
    };
    FetchAnswer::Frame(answer)
}
