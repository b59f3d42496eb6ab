//! The fetch port: OpenStream lists a committed location's chunks (a page at a time);
//! FetchChunk sends one chunk's bytes from the file. Their batched forms serve readers of many
//! small partitions in few round trips: OpenStreams lists the chunks of many locations (one page
//! each, within one shared budget), FetchChunks sends many chunks in one `ChunksData` frame,
//! back to back, after a header giving each chunk's length or its own error. Each location of a
//! batch is checked (`check_app`) and looked up on its own, so one missing or forbidden location
//! fails only its entry; a batch naming too many entries or bytes is refused whole. On a plain
//! connection chunk bytes go by `sendfile`, never through this process's memory. Under TLS every byte must be encrypted by rustls, so
//! `sendfile` cannot be used: the chunk is read with `pread` (off the runtime, in pieces of at
//! most [`TLS_PIECE`] into one buffer the connection reuses) and written through the TLS
//! session. Requests of one connection are served concurrently (bounded); answers go out in the
//! order they are ready.

use std::sync::Arc;
use std::time::Instant;

use sluice_protocol::connection::{FrameWriter, OutFrame};
use sluice_protocol::fetch::{MAX_FETCH_CHUNKS, MAX_OPEN_STREAMS};
use sluice_protocol::frame::{Frame, FrameLimits, MessageType};
use sluice_protocol::transport::WriteHalf;
use sluice_protocol::{pb, ShuffleKey};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

use super::access::check_app;
use super::{busy, error_frame, next_frame, open, reply, Accepted, Next};
use crate::error::{WorkerError, WorkerResult};
use crate::metrics::WorkerMetrics;
use crate::shared::Shared;
use crate::storage::layout::LocationId;
use crate::storage::partition::Partition;
use crate::storage::read::{self, ChunkSource};

/// Requests served at once per fetch connection.
const FETCH_CONCURRENCY: usize = 8;

/// The most of a chunk read from disk at a time to be sent under TLS.
pub const TLS_PIECE: usize = 256 * 1024;

/// What a fetch request may be: a header (a chunk's ranges at most) and no body.
const REQUEST_LIMITS: FrameLimits = FrameLimits {
    max_header: 4 << 20,
    max_body: 0,
};

/// An answer on a fetch connection: a frame, or chunks whose bytes are sent from their files.
enum Answer {
    Frame(OutFrame),
    /// Chunk bytes sent from files after a frame head: one chunk (`ChunkData`, an `Ack`
    /// header) or, for a batched fetch, the chunks that could be read back to back
    /// (`ChunksData`, a `ChunksDataHeader` giving each chunk's length or error).
    Chunks {
        kind: MessageType,
        request_id: u64,
        /// The frame's header, already encoded.
        header: Vec<u8>,
        sources: Vec<ChunkSource>,
        /// When the request was read: its latency ends once the body is sent.
        started: Instant,
    },
}

pub async fn serve(stream: Accepted, peer: &str, shared: Arc<Shared>, shutdown: CancellationToken) {
    let Some((mut conn, frame_writer)) =
        open(stream, peer, &shared, REQUEST_LIMITS, &shutdown).await
    else {
        return;
    };
    let (tx, rx) = mpsc::channel::<Answer>(FETCH_CONCURRENCY * 2);
    let peer_name = peer.to_string();
    let counted = shared.clone();
    let writer = tokio::spawn(async move {
        let metrics = &counted.metrics;
        if let Err(e) = write_answers(frame_writer, rx, metrics).await {
            tracing::debug!(peer = %peer_name, error = %e, "fetch connection closed while answering");
        }
    });
    let permits = Arc::new(Semaphore::new(FETCH_CONCURRENCY));
    let app: Option<Arc<str>> = conn.app().map(Arc::from);
    loop {
        let frame = match next_frame(&mut conn, &shared, &shutdown).await {
            Next::Frame(frame) => frame,
            Next::Busy(head) => {
                if tx.send(Answer::Frame(busy(&shared, &head))).await.is_err() {
                    break;
                }
                continue;
            }
            Next::End => break,
        };
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let (shared, tx, app) = (shared.clone(), tx.clone(), app.clone());
        tokio::spawn(async move {
            let answer = handle(&shared, frame, app.as_deref()).await;
            drop(permit);
            let _ = tx.send(answer).await;
        });
    }
    drop(tx);
    let _ = writer.await;
}

/// Writes answers in the order they are ready. A failure inside a chunk's body leaves the frame
/// incomplete, so it ends the connection (the reader sees a broken fetch).
async fn write_answers(
    mut writer: FrameWriter<WriteHalf>,
    mut answers: mpsc::Receiver<Answer>,
    metrics: &WorkerMetrics,
) -> std::io::Result<()> {
    // The buffer chunks are read into under TLS, reused for the connection's life.
    let mut piece = Vec::new();
    while let Some(answer) = answers.recv().await {
        match answer {
            Answer::Frame(frame) => writer.write_frame(&frame).await?,
            Answer::Chunks {
                kind,
                request_id,
                header,
                sources,
                started,
            } => {
                let len = sources.iter().map(|s| s.len).sum();
                let head = sluice_protocol::frame::head_for_body(kind, request_id, &header, len)
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
                writer.write_head(&head, &header).await?;
                writer.flush().await?;
                for source in &sources {
                    send_source(&mut writer, source, &mut piece).await?;
                }
                metrics.fetched(len);
                metrics
                    .fetch_latency
                    .record(started.elapsed().as_secs_f64());
            }
        }
        if answers.is_empty() {
            writer.flush().await?;
        }
    }
    writer.shutdown().await
}

/// Sends the bytes of one chunk after its frame's head: by `sendfile` on a plain connection,
/// read and encrypted a piece at a time (into `piece`, reused) under TLS.
async fn send_source(
    writer: &mut FrameWriter<WriteHalf>,
    source: &ChunkSource,
    piece: &mut Vec<u8>,
) -> std::io::Result<()> {
    if let Some(dfs) = &source.dfs {
        // On the DFS: ranged reads of the data object, a piece at a time.
        for range in &source.ranges {
            let (mut offset, end) = (range.offset, range.offset + range.length);
            while offset < end {
                let len = (end - offset).min(crate::storage::dfs::READ_PIECE);
                let bytes = dfs.read(offset, len).await?;
                writer.write_body(&bytes).await?;
                offset += len;
            }
        }
        return Ok(());
    }
    let Some(path) = &source.data else {
        return Ok(());
    };
    let file = &read::open_data(path.clone()).await?;
    for range in &source.ranges {
        match writer.get_ref().as_tcp() {
            Some(socket) => read::send_file(socket, file, range.offset, range.length).await?,
            None => {
                // Under TLS: read and encrypt, a piece at a time.
                let (mut offset, end) = (range.offset, range.offset + range.length);
                while offset < end {
                    let len = (end - offset).min(TLS_PIECE as u64) as usize;
                    let buf = std::mem::take(piece);
                    *piece = read::read_piece(file.clone(), buf, offset, len).await?;
                    writer.write_body(piece).await?;
                    offset += len as u64;
                }
            }
        }
    }
    Ok(())
}

/// The partition `location` names, if the session of application `app` may read it.
fn location(
    shared: &Shared,
    location: Option<&pb::LocationRef>,
    app: Option<&str>,
) -> WorkerResult<Arc<Partition>> {
    let location =
        location.ok_or_else(|| WorkerError::InvalidRequest("missing location".into()))?;
    let shuffle =
        ShuffleKey::from_pb(location.shuffle.as_ref()).map_err(WorkerError::InvalidRequest)?;
    check_app(app, &shuffle)
        .inspect_err(|_| shared.metrics.auth_refused_permission.increment(1))?;
    shared.store.get(&shuffle, LocationId::of_ref(location)?)
}

async fn open_stream(
    shared: &Shared,
    frame: &Frame,
    app: Option<&str>,
) -> WorkerResult<pb::StreamOpenedHeader> {
    let header: pb::OpenStreamHeader = frame.decode_header("open stream")?;
    let partition = location(shared, header.location.as_ref(), app)?;
    read::open_stream(partition, header, shared.config.chunk_size.as_u64()).await
}

/// A batched open: each location is checked, found and listed on its own.
async fn open_streams(
    shared: &Shared,
    frame: &Frame,
    app: Option<&str>,
) -> WorkerResult<pb::StreamsOpenedHeader> {
    let header: pb::OpenStreamsHeader = frame.decode_header("open streams")?;
    if header.streams.len() > MAX_OPEN_STREAMS {
        return Err(WorkerError::InvalidRequest(format!(
            "a batched open of {} locations exceeds the limit of {MAX_OPEN_STREAMS}",
            header.streams.len()
        )));
    }
    let locations = header
        .streams
        .into_iter()
        .map(|stream| (location(shared, stream.location.as_ref(), app), stream))
        .collect();
    let pages = read::open_streams(locations, shared.config.chunk_size.as_u64()).await?;
    let streams = pages
        .into_iter()
        .map(|page| match page {
            Ok(opened) => pb::OpenedStream {
                opened: Some(opened),
                error: None,
            },
            Err(e) => pb::OpenedStream {
                opened: None,
                error: Some(error_header(&e)),
            },
        })
        .collect();
    Ok(pb::StreamsOpenedHeader { streams })
}

/// A batched fetch: refused whole when it names too many chunks or bytes; otherwise each chunk
/// is checked, found and opened on its own.
async fn chunks_answer(
    shared: &Shared,
    frame: &Frame,
    app: Option<&str>,
    started: Instant,
) -> WorkerResult<Answer> {
    let header: pb::FetchChunksHeader = frame.decode_header("fetch chunks")?;
    if header.chunks.len() > MAX_FETCH_CHUNKS {
        return Err(WorkerError::InvalidRequest(format!(
            "a batched fetch of {} chunks exceeds the limit of {MAX_FETCH_CHUNKS}",
            header.chunks.len()
        )));
    }
    let max_len = u64::from(shared.limits.max_body);
    let total = header
        .chunks
        .iter()
        .map(|c| c.chunk.as_ref().map_or(0, read::chunk_len))
        .try_fold(0u64, |sum, len| sum.checked_add(len))
        .unwrap_or(u64::MAX);
    if total > max_len {
        return Err(WorkerError::InvalidRequest(format!(
            "a batched fetch of {total} bytes exceeds the limit of {max_len}"
        )));
    }
    let chunks = header
        .chunks
        .into_iter()
        .map(|c| {
            let partition = location(shared, c.location.as_ref(), app)?;
            Ok((partition, c.chunk.unwrap_or_default()))
        })
        .collect();
    let opened = read::chunk_sources(chunks, max_len).await?;
    let mut answers = Vec::with_capacity(opened.len());
    let mut sources = Vec::with_capacity(opened.len());
    for source in opened {
        match source {
            Ok(source) => {
                answers.push(pb::ChunkAnswer {
                    length: source.len,
                    error: None,
                });
                sources.push(source);
            }
            Err(e) => answers.push(pb::ChunkAnswer {
                length: 0,
                error: Some(error_header(&e)),
            }),
        }
    }
    Ok(Answer::Chunks {
        kind: MessageType::ChunksData,
        request_id: frame.request_id,
        header: prost::Message::encode_to_vec(&pb::ChunksDataHeader { chunks: answers }),
        sources,
        started,
    })
}

/// The error of one entry of a batched answer.
fn error_header(error: &WorkerError) -> pb::ErrorHeader {
    pb::ErrorHeader {
        code: error.code() as u32,
        message: error.to_string(),
    }
}

async fn chunk_source(
    shared: &Shared,
    frame: &Frame,
    app: Option<&str>,
) -> WorkerResult<ChunkSource> {
    let header: pb::FetchChunkHeader = frame.decode_header("fetch chunk")?;
    let partition = location(shared, header.location.as_ref(), app)?;
    let max_len = u64::from(shared.limits.max_body);
    read::chunk_source(partition, header.chunk.unwrap_or_default(), max_len).await
}

/// Serves one request; `app` is the application of the connection's session, if any.
async fn handle(shared: &Shared, frame: Frame, app: Option<&str>) -> Answer {
    let started = Instant::now();
    shared.metrics.fetch_requests.increment(1);
    let id = frame.request_id;
    let answer = match frame.kind {
        MessageType::OpenStream => reply(id, open_stream(shared, &frame, app).await, |opened| {
            OutFrame::new(MessageType::StreamOpened, id, &opened)
        }),
        MessageType::FetchChunk => match chunk_source(shared, &frame, app).await {
            Ok(source) => {
                return Answer::Chunks {
                    kind: MessageType::ChunkData,
                    request_id: id,
                    header: prost::Message::encode_to_vec(&pb::Ack {}),
                    sources: vec![source],
                    started,
                }
            }
            Err(e) => error_frame(id, &e),
        },
        MessageType::OpenStreams => reply(id, open_streams(shared, &frame, app).await, |opened| {
            OutFrame::new(MessageType::StreamsOpened, id, &opened)
        }),
        MessageType::FetchChunks => match chunks_answer(shared, &frame, app, started).await {
            Ok(answer) => return answer,
            Err(e) => error_frame(id, &e),
        },
        other => error_frame(
            id,
            &WorkerError::InvalidRequest(format!("{other:?} is not served on the fetch port")),
        ),
    };
    shared
        .metrics
        .fetch_latency
        .record(started.elapsed().as_secs_f64());
    Answer::Frame(answer)
}
