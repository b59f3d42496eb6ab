//! The partition reader.
//!
//! Work is a queue of items in read order: the chunks of every committed file of a partition
//! (every epoch), then an end-of-partition marker. The first `prefetch_chunks` chunk items have
//! their fetches running ahead. Each fetched chunk is walked batch by batch: the CRC is checked,
//! batches of losing attempts, of maps outside the map range, and repeats of a `(map, batch id)`
//! are dropped, and the rest is decompressed and handed out. At the end marker, the bytes,
//! batch counts and checksums read per map are compared with what the winning attempts
//! reported: any difference is data loss, never a short or wrong answer.

use std::collections::{HashMap, HashSet, VecDeque};
use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use sluice_protocol::batch::{self, BatchIter};
use sluice_protocol::connection::OutFrame;
use sluice_protocol::frame::MessageType;
use sluice_protocol::{pb, ShuffleKey};
use tokio::task::JoinHandle;

use crate::error::{ClientError, ClientResult};
use crate::Inner;

/// How long one layout request waits on the master before asking again.
const LAYOUT_POLL_MS: u32 = 30_000;

/// A committed copy of a partition at one epoch: the worker's fetch address and the location.
#[derive(Clone)]
struct CopySource {
    worker: String,
    location: pb::LocationRef,
}

enum Item {
    Chunk {
        partition: u32,
        copy: CopySource,
        /// Other committed copies of the same epoch, to read instead if this one fails.
        alternates: Vec<CopySource>,
        chunk: pb::Chunk,
        fetch: Option<JoinHandle<ClientResult<Bytes>>>,
    },
    End {
        layout: usize,
        /// Why copies of the partition are missing, for a data-loss report.
        missing: Vec<String>,
    },
}

/// What has been read of the current partition.
#[derive(Default)]
struct Seen {
    batches: HashSet<(u32, u32)>,
    per_map: HashMap<u32, pb::BatchStats>,
}

pub struct ShuffleReader {
    inner: Arc<Inner>,
    key: ShuffleKey,
    layout: pb::GetShuffleLayoutResponse,
    maps: Range<u32>,
    next_layout: usize,
    queue: VecDeque<Item>,
    seen: Seen,
    out: VecDeque<Bytes>,
}

impl std::fmt::Debug for ShuffleReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShuffleReader")
            .field("shuffle", &self.key)
            .field("maps", &self.maps)
            .finish()
    }
}

impl Drop for ShuffleReader {
    fn drop(&mut self) {
        for item in &self.queue {
            if let Item::Chunk {
                fetch: Some(task), ..
            } = item
            {
                task.abort();
            }
        }
    }
}

impl ShuffleReader {
    pub(crate) async fn open(
        inner: Arc<Inner>,
        key: ShuffleKey,
        partitions: Range<u32>,
        maps: Option<Range<u32>>,
    ) -> ClientResult<ShuffleReader> {
        if partitions.is_empty() {
            return Err(ClientError::InvalidArgument(format!(
                "empty partition range {partitions:?}"
            )));
        }
        let started = Instant::now();
        let layout = loop {
            let layout = inner
                .master
                .clone()
                .get_shuffle_layout(pb::GetShuffleLayoutRequest {
                    shuffle: Some(key.to_pb()),
                    start_partition: partitions.start,
                    end_partition: partitions.end,
                    wait_ms: LAYOUT_POLL_MS,
                })
                .await
                .map_err(|s| inner.master_error(s))?
                .into_inner();
            if layout.committed {
                break layout;
            }
            if started.elapsed() > inner.config.layout_timeout {
                return Err(ClientError::Timeout(format!(
                    "shuffle {key} was not committed within {:?}",
                    inner.config.layout_timeout
                )));
            }
        };
        let maps = maps.unwrap_or(0..layout.winning_attempt.len() as u32);
        Ok(ShuffleReader {
            inner,
            key,
            layout,
            maps,
            next_layout: 0,
            queue: VecDeque::new(),
            seen: Seen::default(),
            out: VecDeque::new(),
        })
    }

    /// The next block of raw bytes (one batch's records), or `None` at the end of the range.
    pub async fn next(&mut self) -> ClientResult<Option<Bytes>> {
        loop {
            if let Some(bytes) = self.out.pop_front() {
                return Ok(Some(bytes));
            }
            self.fill().await?;
            self.start_fetches();
            match self.queue.pop_front() {
                None => return Ok(None),
                Some(Item::Chunk {
                    partition,
                    copy,
                    alternates,
                    chunk,
                    fetch,
                }) => {
                    let task = fetch.unwrap_or_else(|| self.spawn_fetch(&copy, &chunk));
                    let fetched = match task.await {
                        Ok(result) => result,
                        Err(e) => Err(ClientError::Fetch {
                            worker: copy.worker.clone(),
                            source: sluice_protocol::ProtocolError::Closed {
                                peer: format!("{} (fetch task: {e})", copy.worker),
                            },
                        }),
                    };
                    // A copy that cannot be fetched, or whose bytes fail their checksums, is
                    // read around through another copy of the same epoch.
                    match fetched.and_then(|bytes| self.take_chunk(partition, bytes)) {
                        Ok(()) => {}
                        Err(error) => self.fail_over(partition, &copy, alternates, error).await?,
                    }
                }
                Some(Item::End { layout, missing }) => self.end_partition(layout, missing)?,
            }
        }
    }

    fn queued_chunks(&self) -> usize {
        self.queue
            .iter()
            .filter(|i| matches!(i, Item::Chunk { .. }))
            .count()
    }

    /// Opens the next partitions' streams until enough chunks are queued to prefetch.
    async fn fill(&mut self) -> ClientResult<()> {
        while self.next_layout < self.layout.partitions.len()
            && (self.queue.is_empty() || self.queued_chunks() < self.inner.config.prefetch_chunks)
        {
            let index = self.next_layout;
            self.next_layout += 1;
            self.open_partition(index).await?;
        }
        Ok(())
    }

    fn expected_in_range<'a>(
        &'a self,
        partition: &'a pb::PartitionLayout,
    ) -> impl Iterator<Item = &'a pb::ExpectedMap> {
        partition
            .expected
            .iter()
            .filter(|e| self.maps.contains(&e.map_id))
    }

    async fn open_partition(&mut self, index: usize) -> ClientResult<()> {
        let partition = &self.layout.partitions[index];
        // Per epoch, the committed copies, primary first.
        let mut epochs: Vec<(u32, Vec<CopySource>, Vec<String>)> = Vec::new();
        for location in &partition.locations {
            let at = match epochs
                .iter()
                .position(|(epoch, _, _)| *epoch == location.epoch)
            {
                Some(at) => at,
                None => {
                    epochs.push((location.epoch, Vec::new(), Vec::new()));
                    epochs.len() - 1
                }
            };
            if !location.ok {
                epochs[at].2.push(location.error.clone());
                continue;
            }
            if location.stats.is_some_and(|s| s.batches == 0) {
                // Committed empty: nothing to read, and nothing lost.
                continue;
            }
            let worker = self
                .layout
                .workers
                .get(location.worker as usize)
                .ok_or_else(|| {
                    self.lost(partition.partition, "layout names an unknown worker".into())
                })?
                .fetch_addr();
            let copy = CopySource {
                worker,
                location: pb::LocationRef {
                    shuffle: Some(self.key.to_pb()),
                    partition: partition.partition,
                    epoch: location.epoch,
                    role: location.role,
                },
            };
            if location.role == pb::Role::Primary as i32 {
                epochs[at].1.insert(0, copy);
            } else {
                epochs[at].1.push(copy);
            }
        }
        let partition_id = partition.partition;
        let mut items = Vec::new();
        let mut missing = Vec::new();
        for (epoch, copies, errors) in epochs {
            if copies.is_empty() {
                // An epoch with no committed copy may have held nothing acknowledged (a revive
                // moved the partition before any push to it succeeded). Whether anything is
                // missing is decided exactly at the end of the partition, against what the
                // winning attempts reported; the reasons are kept for that report.
                if !errors.is_empty() {
                    missing.push(format!(
                        "epoch {epoch} has no committed copy ({})",
                        errors.join("; ")
                    ));
                }
                continue;
            }
            items.extend(self.open_copies(partition_id, copies).await?);
        }
        self.queue.extend(items);
        self.queue.push_back(Item::End {
            layout: index,
            missing,
        });
        Ok(())
    }

    /// Opens the first of `copies` that answers and returns its chunks, each carrying the
    /// copies after it as alternates.
    async fn open_copies(
        &self,
        partition: u32,
        mut copies: Vec<CopySource>,
    ) -> ClientResult<Vec<Item>> {
        let mut last_error = None;
        while !copies.is_empty() {
            let copy = copies.remove(0);
            match self.open_stream(&copy).await {
                Ok(chunks) => {
                    return Ok(chunks
                        .into_iter()
                        .map(|chunk| Item::Chunk {
                            partition,
                            copy: copy.clone(),
                            alternates: copies.clone(),
                            chunk,
                            fetch: None,
                        })
                        .collect())
                }
                Err(error) => {
                    if !copies.is_empty() {
                        tracing::warn!(shuffle = %self.key, partition, worker = %copy.worker, error = %error, "copy unreadable, reading its replica");
                    }
                    last_error = Some(error);
                }
            }
        }
        let reason = match last_error {
            Some(error) => format!("no copy can be read: {error}"),
            None => "no copy to read".into(),
        };
        Err(self.lost(partition, reason))
    }

    async fn open_stream(&self, copy: &CopySource) -> ClientResult<Vec<pb::Chunk>> {
        let header = pb::OpenStreamHeader {
            location: Some(copy.location.clone()),
            start_map: self.maps.start,
            end_map: Some(self.maps.end),
        };
        let opened = self
            .inner
            .workers
            .call(
                &copy.worker,
                OutFrame::new(MessageType::OpenStream, 0, &header),
                MessageType::StreamOpened,
                self.inner.config.request_timeout,
            )
            .await
            .and_then(|frame| frame.decode_header::<pb::StreamOpenedHeader>("stream opened"))
            .map_err(|source| ClientError::Fetch {
                worker: copy.worker.clone(),
                source,
            })?;
        Ok(opened.chunks)
    }

    /// A chunk of `failed` could not be fetched or failed its checksums: drop the copy's
    /// remaining chunks and read the next copy of the same epoch from its start instead
    /// (batches already taken passed their own checksums; read again, they are dropped as
    /// repeats). Without another copy the error stands.
    async fn fail_over(
        &mut self,
        partition: u32,
        failed: &CopySource,
        alternates: Vec<CopySource>,
        error: ClientError,
    ) -> ClientResult<()> {
        if alternates.is_empty() {
            // The last copy of this epoch is gone or corrupt: the data is lost to this reader.
            return Err(match error {
                ClientError::DataLost { .. } => error,
                other => self.lost(partition, format!("no other copy to read: {other}")),
            });
        }
        tracing::warn!(shuffle = %self.key, partition, worker = %failed.worker, error = %error, "copy failed, reading another copy");
        let same =
            |copy: &CopySource| copy.worker == failed.worker && copy.location == failed.location;
        self.queue.retain(|item| match item {
            Item::Chunk { copy, fetch, .. } if same(copy) => {
                if let Some(task) = fetch {
                    task.abort();
                }
                false
            }
            _ => true,
        });
        let items = self.open_copies(partition, alternates).await?;
        for item in items.into_iter().rev() {
            self.queue.push_front(item);
        }
        Ok(())
    }

    fn spawn_fetch(&self, copy: &CopySource, chunk: &pb::Chunk) -> JoinHandle<ClientResult<Bytes>> {
        let inner = self.inner.clone();
        let worker = copy.worker.clone();
        let frame = OutFrame::new(
            MessageType::FetchChunk,
            0,
            &pb::FetchChunkHeader {
                location: Some(copy.location.clone()),
                chunk: Some(chunk.clone()),
            },
        );
        tokio::spawn(async move {
            inner
                .workers
                .call(
                    &worker,
                    frame,
                    MessageType::ChunkData,
                    inner.config.request_timeout,
                )
                .await
                .map(|frame| frame.body)
                .map_err(|source| ClientError::Fetch { worker, source })
        })
    }

    fn start_fetches(&mut self) {
        let mut budget = self.inner.config.prefetch_chunks.max(1);
        let mut spawns = Vec::new();
        for (i, item) in self.queue.iter().enumerate() {
            if budget == 0 {
                break;
            }
            if let Item::Chunk { fetch, .. } = item {
                budget -= 1;
                if fetch.is_none() {
                    spawns.push(i);
                }
            }
        }
        for i in spawns {
            let task = match &self.queue[i] {
                Item::Chunk { copy, chunk, .. } => self.spawn_fetch(copy, chunk),
                Item::End { .. } => continue,
            };
            if let Item::Chunk { fetch, .. } = &mut self.queue[i] {
                *fetch = Some(task);
            }
        }
    }

    fn lost(&self, partition: u32, reason: String) -> ClientError {
        ClientError::DataLost {
            shuffle: self.key.to_string(),
            partition,
            reason,
        }
    }

    fn take_chunk(&mut self, partition: u32, bytes: Bytes) -> ClientResult<()> {
        for item in BatchIter::new(bytes) {
            let (head, whole) =
                item.map_err(|e| self.lost(partition, format!("malformed batch: {e}")))?;
            batch::verify(&head, &whole).map_err(|e| self.lost(partition, e.to_string()))?;
            let winner = self
                .layout
                .winning_attempt
                .get(head.map_id as usize)
                .copied();
            if !self.maps.contains(&head.map_id) || winner != Some(head.attempt) {
                continue;
            }
            if !self.seen.batches.insert((head.map_id, head.batch_id)) {
                continue;
            }
            self.seen
                .per_map
                .entry(head.map_id)
                .or_default()
                .add(head.total_len() as u64, head.crc);
            let raw = batch::decompress(&head, &whole)
                .map_err(|e| self.lost(partition, e.to_string()))?;
            if !raw.is_empty() {
                self.out.push_back(raw);
            }
        }
        Ok(())
    }

    fn end_partition(&mut self, index: usize, missing: Vec<String>) -> ClientResult<()> {
        let seen = std::mem::take(&mut self.seen);
        let missing = if missing.is_empty() {
            String::new()
        } else {
            format!("; {}", missing.join("; "))
        };
        let partition = &self.layout.partitions[index];
        let mut expected_maps = 0usize;
        for expected in self.expected_in_range(partition) {
            let want = expected.stats.unwrap_or_default();
            let got = seen
                .per_map
                .get(&expected.map_id)
                .copied()
                .unwrap_or_default();
            if want.batches > 0 {
                expected_maps += 1;
            }
            if got != want {
                return Err(self.lost(partition.partition, format!(
                    "map {} wrote {} bytes in {} batches (checksum {:#x}) but {} bytes in {} batches (checksum {:#x}) were read{missing}",
                    expected.map_id, want.bytes, want.batches, want.checksum, got.bytes, got.batches, got.checksum
                )));
            }
        }
        let read_maps = seen.per_map.values().filter(|s| s.batches > 0).count();
        if read_maps != expected_maps {
            return Err(self.lost(
                partition.partition,
                format!("read batches of {read_maps} maps but {expected_maps} maps reported data"),
            ));
        }
        Ok(())
    }
}
