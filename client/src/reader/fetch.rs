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

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use sluice_protocol::connection::OutFrame;
use sluice_protocol::frame::{Frame, MessageType};
use sluice_protocol::{pb, ErrorCode};

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
}

impl Fetcher {
    pub fn new(inner: Arc<Inner>) -> Fetcher {
        Fetcher {
            inner,
            down: Arc::default(),
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
                .workers()
                .call(worker, frame.clone(), expected, config.request_timeout)
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
