//! The partition reader.
//!
//! Work is a queue of items in read order: the chunks of the copies to read of every epoch of a
//! partition, then an end-of-partition marker. [`plan`] picks the copies: one per epoch when
//! its copies report the same totals, each of them when they differ. The first
//! `prefetch_chunks` chunk items have their fetches running ahead; [`fetch`] retries a failed
//! request on the same copy before giving up on it. Each fetched chunk is walked batch by batch
//! ([`seen`]): the CRC and the partition are checked, batches of losing attempts, of maps
//! outside the map range and repeats of a `(map, batch id)` are dropped, the rest is
//! decompressed, and only then counted and handed out.
//!
//! A copy that cannot be fetched, or whose bytes are damaged, is read around through another
//! copy holding the same batches, from its start (what was taken from it passed every check;
//! read again, it is dropped as a repeat). With no such copy left the copy is not declared lost
//! on the spot: other epochs may hold all it had (a push re-sent after a revive). At the end
//! marker, the bytes, batch counts and checksums taken per map are compared with what the
//! winning attempts reported; any difference is data loss, reported with the copies that could
//! not be read, never a short or wrong answer. A batch whose checksum holds but whose data does
//! not decompress was written so, and every copy holds it: that is data loss at once.

mod fetch;
mod plan;
mod seen;

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_protocol::batch::BatchIter;
use sluice_protocol::{pb, ShuffleKey};
use tokio::task::JoinHandle;

use self::fetch::Fetcher;
use self::plan::{CopySource, Epoch};
use self::seen::Seen;
use crate::error::{ClientError, ClientResult};
use crate::Inner;

/// How long one layout request waits on the master before asking again (at most).
const LAYOUT_POLL: Duration = Duration::from_secs(30);

enum Item {
    Chunk {
        partition: u32,
        copy: CopySource,
        /// Copies holding the same batches, to read instead if this one fails.
        alternates: Vec<CopySource>,
        chunk: pb::Chunk,
        fetch: Option<JoinHandle<ClientResult<Bytes>>>,
    },
    End {
        layout: usize,
        /// Why copies of the partition could not be opened or are missing, for a data-loss
        /// report.
        unread: Vec<String>,
    },
}

/// Why a fetched chunk could not be used.
enum Unusable {
    /// This copy could not be fetched, or its bytes are damaged or misplaced: another copy
    /// holding the same batches may serve.
    Copy(String),
    /// The data is lost whichever copy is read.
    Lost(ClientError),
}

pub struct ShuffleReader {
    inner: Arc<Inner>,
    fetcher: Fetcher,
    key: ShuffleKey,
    layout: pb::GetShuffleLayoutResponse,
    maps: Range<u32>,
    next_layout: usize,
    queue: VecDeque<Item>,
    /// What was taken from the partition being read.
    seen: Seen,
    /// Copies of the partition being read that broke part-way with no other copy to read.
    unread: Vec<String>,
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
        // A poll must end well within the limit of one master call.
        let poll = LAYOUT_POLL.min(inner.config.master_request_timeout / 2);
        let request = pb::GetShuffleLayoutRequest {
            shuffle: Some(key.to_pb()),
            start_partition: partitions.start,
            end_partition: partitions.end,
            wait_ms: u32::try_from(poll.as_millis()).unwrap_or(u32::MAX),
        };
        inner.session(&key.app_id).await?;
        let layout = loop {
            let layout = inner
                .master
                .call(request.clone(), |mut master, request| async move {
                    master.get_shuffle_layout(request).await
                })
                .await?;
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
            fetcher: Fetcher::new(inner.clone()),
            inner,
            key,
            layout,
            maps,
            next_layout: 0,
            queue: VecDeque::new(),
            seen: Seen::default(),
            unread: Vec::new(),
            out: VecDeque::new(),
        })
    }

    /// The next block of raw bytes (one batch's records), or `None` at the end of the range.
    /// Data loss is an error (and counted in the client's metrics), never a short answer.
    pub async fn next(&mut self) -> ClientResult<Option<Bytes>> {
        self.next_block()
            .await
            .map_err(|e| self.inner.metrics.check_loss(e))
    }

    async fn next_block(&mut self) -> ClientResult<Option<Bytes>> {
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
                    let task = fetch
                        .unwrap_or_else(|| self.spawn_fetch(&copy, &chunk, !alternates.is_empty()));
                    let fetched = match task.await {
                        Ok(result) => result.map_err(|e| Unusable::Copy(e.to_string())),
                        Err(e) => Err(Unusable::Copy(format!(
                            "fetch task for {} failed: {e}",
                            copy.worker
                        ))),
                    };
                    match fetched.and_then(|bytes| self.take_chunk(partition, bytes)) {
                        Ok(()) => {}
                        Err(Unusable::Copy(reason)) => {
                            self.fail_over(partition, &copy, alternates, reason).await
                        }
                        Err(Unusable::Lost(error)) => return Err(error),
                    }
                }
                Some(Item::End { layout, unread }) => self.end_partition(layout, unread)?,
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
        let id = partition.partition;
        let epochs = Epoch::group(&partition.locations, |location| {
            let worker = self
                .layout
                .workers
                .get(location.worker as usize)
                .ok_or_else(|| format!("the layout names an unknown worker {}", location.worker))?;
            Ok(CopySource {
                worker: worker.fetch_addr(),
                location: pb::LocationRef {
                    shuffle: Some(self.key.to_pb()),
                    partition: id,
                    epoch: location.epoch,
                    role: location.role,
                },
            })
        })
        .map_err(|reason| self.lost(id, reason))?;
        let mut items = Vec::new();
        let mut unread = Vec::new();
        for epoch in epochs {
            let reads = epoch.reads();
            if reads.is_empty() && !epoch.failed.is_empty() {
                // An epoch with no committed copy may have held nothing acknowledged (a revive
                // moved the partition before any push to it succeeded).
                unread.push(format!(
                    "epoch {} has no committed copy ({})",
                    epoch.epoch,
                    epoch.failed.join("; ")
                ));
            }
            for copies in reads {
                match self.open_copies(id, copies).await {
                    Ok(chunks) => items.extend(chunks),
                    // Other epochs may hold what it had: the check at the end decides.
                    Err(reason) => unread.push(format!("epoch {}: {reason}", epoch.epoch)),
                }
            }
        }
        self.queue.extend(items);
        self.queue.push_back(Item::End {
            layout: index,
            unread,
        });
        Ok(())
    }

    /// Opens the first of `copies` (copies holding the same batches) that answers and returns
    /// its chunks, each carrying the copies after it as alternates; or why none could be opened.
    async fn open_copies(
        &self,
        partition: u32,
        copies: Vec<CopySource>,
    ) -> Result<Vec<Item>, String> {
        let mut errors = Vec::new();
        let mut copies = VecDeque::from(copies);
        while let Some(copy) = copies.pop_front() {
            let opened = self
                .fetcher
                .open_stream(
                    &copy,
                    self.maps.start,
                    Some(self.maps.end),
                    !copies.is_empty(),
                )
                .await;
            match opened {
                Ok(chunks) => {
                    let alternates = Vec::from(copies);
                    return Ok(chunks
                        .into_iter()
                        .map(|chunk| Item::Chunk {
                            partition,
                            copy: copy.clone(),
                            alternates: alternates.clone(),
                            chunk,
                            fetch: None,
                        })
                        .collect());
                }
                Err(error) => {
                    if !copies.is_empty() {
                        tracing::warn!(shuffle = %self.key, partition, worker = %copy.worker, error = %error, "copy unreadable, reading another copy");
                    }
                    errors.push(error.to_string());
                }
            }
        }
        Err(format!("no copy could be opened ({})", errors.join("; ")))
    }

    /// A chunk of `failed` could not be fetched or used: drop the copy's remaining chunks and
    /// read the next copy holding the same batches from its start instead (batches already taken
    /// passed every check; read again, they are dropped as repeats). Without one, the reason is
    /// kept for the end-of-partition check.
    async fn fail_over(
        &mut self,
        partition: u32,
        failed: &CopySource,
        alternates: Vec<CopySource>,
        reason: String,
    ) {
        self.queue.retain(|item| match item {
            Item::Chunk { copy, fetch, .. } if copy == failed => {
                if let Some(task) = fetch {
                    task.abort();
                }
                false
            }
            _ => true,
        });
        let epoch = failed.location.epoch;
        if alternates.is_empty() {
            tracing::warn!(shuffle = %self.key, partition, epoch, worker = %failed.worker, error = %reason, "copy failed and no other copy holds its batches; the end-of-partition check decides");
            self.unread
                .push(format!("epoch {epoch} copy on {}: {reason}", failed.worker));
            return;
        }
        tracing::warn!(shuffle = %self.key, partition, epoch, worker = %failed.worker, error = %reason, "copy failed, reading another copy");
        match self.open_copies(partition, alternates).await {
            Ok(items) => {
                for item in items.into_iter().rev() {
                    self.queue.push_front(item);
                }
            }
            Err(more) => self.unread.push(format!(
                "epoch {epoch} copy on {}: {reason}; {more}",
                failed.worker
            )),
        }
    }

    fn spawn_fetch(
        &self,
        copy: &CopySource,
        chunk: &pb::Chunk,
        stand_in: bool,
    ) -> JoinHandle<ClientResult<Bytes>> {
        let fetcher = self.fetcher.clone();
        let copy = copy.clone();
        let chunk = chunk.clone();
        tokio::spawn(async move { fetcher.fetch_chunk(&copy, &chunk, stand_in).await })
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
                Item::Chunk {
                    copy,
                    chunk,
                    alternates,
                    ..
                } => self.spawn_fetch(copy, chunk, !alternates.is_empty()),
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

    /// Takes the batches of a chunk of a copy of `partition`.
    fn take_chunk(&mut self, partition: u32, bytes: Bytes) -> Result<(), Unusable> {
        for item in BatchIter::new(bytes) {
            let (head, whole) =
                item.map_err(|e| Unusable::Copy(format!("malformed batch: {e}")))?;
            let verified = seen::verify(partition, head, whole).map_err(Unusable::Copy)?;
            let winner = self
                .layout
                .winning_attempt
                .get(head.map_id as usize)
                .copied();
            if !self.maps.contains(&head.map_id)
                || winner != Some(head.attempt)
                || self.seen.contains(&head)
            {
                continue;
            }
            let accepted = verified.decompress().map_err(|e| {
                Unusable::Lost(self.lost(
                    partition,
                    format!(
                        "map {} attempt {} wrote a batch whose checksum holds but whose data does not decompress, so every copy holds it: {e}",
                        head.map_id, head.attempt
                    ),
                ))
            })?;
            if let Some(raw) = self.seen.take(accepted) {
                if !raw.is_empty() {
                    self.out.push_back(raw);
                }
            }
        }
        Ok(())
    }

    fn end_partition(&mut self, index: usize, mut unread: Vec<String>) -> ClientResult<()> {
        let seen = std::mem::take(&mut self.seen);
        unread.append(&mut self.unread);
        let partition = &self.layout.partitions[index];
        if let Err(reason) = seen.check(self.expected_in_range(partition)) {
            let mut reason = reason;
            for note in &unread {
                reason.push_str("; ");
                reason.push_str(note);
            }
            return Err(self.lost(partition.partition, reason));
        }
        if !unread.is_empty() {
            tracing::info!(shuffle = %self.key, partition = partition.partition, unread = ?unread, "copies could not be read, but the others held every batch");
        }
        Ok(())
    }
}
