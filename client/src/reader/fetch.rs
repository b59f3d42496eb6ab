//! Requests to workers' fetch ports, each retried on the same copy before the reader gives up on
//! it.
//!
//! A request that fails with a retryable error (connection refused or reset, timeout, busy) is
//! sent again after a growing wait, up to `fetch_retries` times: a worker that restarts or
//! drops a connection does not cost a failover, or with one copy a stage retry. A request that
//! timed out is sent again only when no other copy can stand in: a hung worker would cost a
//! whole request timeout per try, and the other copy is likely fine. A worker that used up its
//! retries is remembered as down, and later requests to it get one try only, so a dead worker
//! costs the wait once per reader, not once per chunk; one answer clears it.
//!
//! [`Fetcher::open_streams`] and [`Fetcher::fetch_chunks`] are the batched forms: many
//! locations, or many chunks, of one worker per request. A batched request is retried whole; an
//! entry the worker answered with its own error fails alone.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use sluice_protocol::connection::OutFrame;
use sluice_protocol::fetch::{self as batched, MAX_OPEN_STREAMS};
use sluice_protocol::frame::{Frame, MessageType};
use sluice_protocol::{pb, ErrorCode, ProtocolError};

use super::plan::CopySource;
use crate::backoff::Backoff;
use crate::error::{ClientError, ClientResult};
use crate::Inner;

/// The longest wait between two tries of one request.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub(super) struct Fetcher {
    inner: Arc<Inner>,
    down: Arc<Mutex<HashSet<String>>>,
    /// Workers a read moved away from because they were slow: their copies are read last.
    slow: Arc<Mutex<HashSet<String>>>,
}

impl Fetcher {
    pub fn new(inner: Arc<Inner>) -> Fetcher {
        Fetcher {
            inner,
            down: Arc::default(),
            slow: Arc::default(),
        }
    }

    /// Opens a stream of `copy` for maps `[start_map, end_map)` and returns its chunks.
    /// `stand_in`: whether another copy holds the same batches.
    pub async fn open_stream(
        &self,
        copy: &CopySource,
        start_map: u32,
        end_map: Option<u32>,
        stand_in: bool,
    ) -> ClientResult<Vec<pb::Chunk>> {
        let mut chunks = Vec::new();
        let mut index_offset = 0;
        loop {
            let frame = OutFrame::new(
                MessageType::OpenStream,
                0,
                &pb::OpenStreamHeader {
                    location: Some(copy.location.clone()),
                    start_map,
                    end_map,
                    index_offset,
                },
            );
            let answer = self
                .call(&copy.worker, frame, MessageType::StreamOpened, stand_in)
                .await?;
            let opened = answer
                .decode_header::<pb::StreamOpenedHeader>("stream opened")
                .map_err(|source| ClientError::Fetch {
                    worker: copy.worker.clone(),
                    source,
                })?;
            chunks.extend(opened.chunks);
            // A large location is listed page by page; a page must move forward.
            match opened.next_index_offset {
                Some(next) if next > index_offset => index_offset = next,
                Some(next) => {
                    return Err(ClientError::Fetch {
                        worker: copy.worker.clone(),
                        source: sluice_protocol::ProtocolError::Remote {
                            peer: copy.worker.clone(),
                            code: sluice_protocol::ErrorCode::Internal,
                            message: format!("stream page at {index_offset} points back to {next}"),
                        },
                    })
                }
                None => return Ok(chunks),
            }
        }
    }

    /// Opens `locations` (all on `worker`) for maps `[start_map, end_map)` in as few requests as
    /// the worker allows, and returns, in order, each location's chunks or why it could not be
    /// opened. `stand_in`: whether another copy holds the batches of every location.
    pub async fn open_streams(
        &self,
        worker: &str,
        locations: Vec<pb::LocationRef>,
        start_map: u32,
        end_map: Option<u32>,
        stand_in: bool,
    ) -> Vec<Result<Vec<pb::Chunk>, String>> {
        struct Entry {
            location: pb::LocationRef,
            index_offset: u64,
            chunks: Vec<pb::Chunk>,
            done: Option<Result<(), String>>,
        }
        let mut entries: Vec<Entry> = locations
            .into_iter()
            .map(|location| Entry {
                location,
                index_offset: 0,
                chunks: Vec::new(),
                done: None,
            })
            .collect();
        loop {
            // Locations still to list (a big one page by page), a request's worth at a time.
            let asked: Vec<usize> = (0..entries.len())
                .filter(|&i| entries[i].done.is_none())
                .take(MAX_OPEN_STREAMS)
                .collect();
            if asked.is_empty() {
                break;
            }
            let streams = asked
                .iter()
                .map(|&i| pb::OpenStreamHeader {
                    location: Some(entries[i].location.clone()),
                    start_map,
                    end_map,
                    index_offset: entries[i].index_offset,
                })
                .collect();
            let frame = OutFrame::new(
                MessageType::OpenStreams,
                0,
                &pb::OpenStreamsHeader { streams },
            );
            let answer = self
                .call(worker, frame, MessageType::StreamsOpened, stand_in)
                .await
                .and_then(|answer| {
                    answer
                        .decode_header::<pb::StreamsOpenedHeader>("streams opened")
                        .map_err(|source| fetch_error(worker, source))
                });
            let opened = match answer {
                Ok(opened) if opened.streams.len() == asked.len() => opened.streams,
                Ok(opened) => {
                    let reason = fetch_error(
                        worker,
                        remote(
                            worker,
                            ErrorCode::Internal,
                            format!(
                                "{} locations were opened and {} answered",
                                asked.len(),
                                opened.streams.len()
                            ),
                        ),
                    )
                    .to_string();
                    for &i in &asked {
                        entries[i].done = Some(Err(reason.clone()));
                    }
                    continue;
                }
                Err(error) => {
                    let reason = error.to_string();
                    for &i in &asked {
                        entries[i].done = Some(Err(reason.clone()));
                    }
                    continue;
                }
            };
            let mut progress = false;
            for (&i, stream) in asked.iter().zip(opened) {
                let entry = &mut entries[i];
                let page = match (stream.error, stream.opened) {
                    (Some(error), _) => {
                        let code = ErrorCode::from_u32(error.code);
                        entry.done = Some(Err(fetch_error(
                            worker,
                            remote(worker, code, error.message),
                        )
                        .to_string()));
                        progress = true;
                        continue;
                    }
                    (None, page) => page.unwrap_or_default(),
                };
                let listed = !page.chunks.is_empty();
                entry.chunks.extend(page.chunks);
                // A large location is listed page by page; a page must move forward, or (the
                // worker's answer was full) be left untouched to ask again.
                match page.next_index_offset {
                    None => {
                        entry.done = Some(Ok(()));
                        progress = true;
                    }
                    Some(next) if next > entry.index_offset => {
                        entry.index_offset = next;
                        progress = true;
                    }
                    Some(next) if next == entry.index_offset && !listed => {}
                    Some(next) => {
                        let message = format!(
                            "stream page at {} points back to {next}",
                            entry.index_offset
                        );
                        entry.done = Some(Err(fetch_error(
                            worker,
                            remote(worker, ErrorCode::Internal, message),
                        )
                        .to_string()));
                        progress = true;
                    }
                }
            }
            if !progress {
                let reason = format!("worker {worker} listed none of {} locations", asked.len());
                for &i in &asked {
                    entries[i].done = Some(Err(reason.clone()));
                }
            }
        }
        entries
            .into_iter()
            .map(|entry| match entry.done {
                Some(Ok(())) | None => Ok(entry.chunks),
                Some(Err(reason)) => Err(reason),
            })
            .collect()
    }

    /// The bytes of many chunks of `worker` in one request, each chunk's own error apart; the
    /// request's error when it failed whole. `stand_in`: whether another copy holds the batches
    /// of every chunk.
    pub async fn fetch_chunks(
        &self,
        worker: &str,
        chunks: Vec<pb::FetchChunkHeader>,
        stand_in: bool,
    ) -> ClientResult<Vec<ClientResult<Bytes>>> {
        let count = chunks.len();
        let frame = OutFrame::new(
            MessageType::FetchChunks,
            0,
            &pb::FetchChunksHeader { chunks },
        );
        let answer = self
            .call(worker, frame, MessageType::ChunksData, stand_in)
            .await?;
        let header = answer
            .decode_header::<pb::ChunksDataHeader>("chunks data")
            .map_err(|source| fetch_error(worker, source))?;
        let split = batched::split_chunks(&header, answer.body, count)
            .map_err(|message| fetch_error(worker, remote(worker, ErrorCode::Internal, message)))?;
        Ok(split
            .into_iter()
            .map(|chunk| {
                chunk.map_err(|(code, message)| fetch_error(worker, remote(worker, code, message)))
            })
            .collect())
    }

    /// The bytes of one chunk of `copy`. `stand_in`: whether another copy holds the same
    /// batches.
    pub async fn fetch_chunk(
        &self,
        copy: &CopySource,
        chunk: &pb::Chunk,
        stand_in: bool,
    ) -> ClientResult<Bytes> {
        let frame = OutFrame::new(
            MessageType::FetchChunk,
            0,
            &pb::FetchChunkHeader {
                location: Some(copy.location.clone()),
                chunk: Some(chunk.clone()),
            },
        );
        let answer = self
            .call(&copy.worker, frame, MessageType::ChunkData, stand_in)
            .await?;
        Ok(answer.body)
    }

    async fn call(
        &self,
        worker: &str,
        frame: OutFrame,
        expected: MessageType,
        stand_in: bool,
    ) -> ClientResult<Frame> {
        let config = &self.inner.config;
        let retries = if self.is_down(worker) {
            0
        } else {
            config.fetch_retries
        };
        let mut backoff = Backoff::new(config.fetch_retry_wait, MAX_RETRY_WAIT);
        let mut tries = 0;
        loop {
            tries += 1;
            let result = self
                .inner
                .call_worker(self.inner.workers(), worker, frame.clone(), expected)
                .await;
            let source = match result {
                Ok(answer) => {
                    self.set_down(worker, false);
                    return Ok(answer);
                }
                Err(source) => source,
            };
            let code = source.code();
            let retryable = code.is_retryable() && !(stand_in && code == ErrorCode::Timeout);
            if !retryable || tries > retries {
                if retryable {
                    self.set_down(worker, true);
                }
                return Err(ClientError::Fetch {
                    worker: worker.to_string(),
                    source,
                });
            }
            tracing::debug!(worker, tries, error = %source, "fetch failed, trying the same copy again");
            self.inner.metrics.fetch_retry();
            backoff.wait().await;
        }
    }

    pub fn mark_slow(&self, worker: &str) {
        self.slow
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(worker.to_string());
    }

    pub fn is_slow(&self, worker: &str) -> bool {
        let slow = self.slow.lock().unwrap_or_else(|e| e.into_inner());
        !slow.is_empty() && slow.contains(worker)
    }

    fn is_down(&self, worker: &str) -> bool {
        self.down
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(worker)
    }

    fn set_down(&self, worker: &str, down: bool) {
        let mut set = self.down.lock().unwrap_or_else(|e| e.into_inner());
        if down {
            set.insert(worker.to_string());
        } else if !set.is_empty() {
            set.remove(worker);
        }
    }
}

fn fetch_error(worker: &str, source: ProtocolError) -> ClientError {
    ClientError::Fetch {
        worker: worker.to_string(),
        source,
    }
}

fn remote(worker: &str, code: ErrorCode, message: String) -> ProtocolError {
    ProtocolError::Remote {
        peer: worker.to_string(),
        code,
        message,
    }
}
