//! The partition reader.
//!
//! Work is a queue of items in read order: the chunks of the copies to read of every epoch of a
//! partition, then an end-of-partition marker. [`plan`] picks the copies: one per epoch when
//! its copies report the same totals, each of them when they differ. [`fetch`] retries a failed
//! request on the same copy before giving up on it.
//!
//! Many small partitions are read in few round trips. The next partitions are opened together:
//! the copies to read are grouped by worker and each worker lists them in one batched open
//! (`OpenStreams`), the workers at once, the next batch's open under way while the reader takes
//! what the last one queued. Fetches run ahead of the reader within a window of
//! `prefetch_chunks` units of [`FETCH_BATCH_BYTES`]: a large chunk is one unit, fetched alone;
//! small chunks cost their bytes (at least [`MIN_COST`]) and those of one worker are fetched
//! together (`FetchChunks`, up to a unit's bytes or [`FETCH_BATCH_CHUNKS`] chunks). Each chunk
//! item still waits on its own result (a batch's task hands every chunk its bytes or its
//! error), so everything below stays per chunk. Each fetched chunk is walked batch by batch
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

use std::collections::{HashMap, HashSet, VecDeque};
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_protocol::batch::BatchIter;
use sluice_protocol::{pb, ShuffleKey};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use self::fetch::Fetcher;
use self::plan::{CopySource, Epoch};
use self::seen::Seen;
use crate::error::{ClientError, ClientResult};
use crate::Inner;

/// How long one layout request waits on the master before asking again (at most).
const LAYOUT_POLL: Duration = Duration::from_secs(30);

/// The most bytes of one batched fetch, and the unit of the fetch-ahead window (the workers'
/// default chunk size): `prefetch_chunks` large chunks, or as many units of small ones.
const FETCH_BATCH_BYTES: u64 = 4 << 20;
/// The most chunks of one batched fetch.
const FETCH_BATCH_CHUNKS: usize = 1024;
/// A chunk above this is large: fetched alone, one unit of the window.
const SMALL_CHUNK: u64 = FETCH_BATCH_BYTES / 4;
/// What the smallest chunk costs in the window, so the window bounds the count of chunks too.
const MIN_COST: u64 = FETCH_BATCH_BYTES / FETCH_BATCH_CHUNKS as u64;
/// The most partitions opened together.
const OPEN_BATCH: usize = 2048;
/// A copy whose worker's round trips are this many times the fastest copy's is read last...
const SLOW_COPY_FACTOR: u32 = 4;
/// ...when they are above this too.
const SLOW_COPY_FLOOR: Duration = Duration::from_millis(20);

/// What a chunk costs in the fetch-ahead window.
fn cost(chunk: &pb::Chunk) -> u64 {
    let len = chunk_len(chunk);
    if len > SMALL_CHUNK {
        FETCH_BATCH_BYTES
    } else {
        len.max(MIN_COST)
    }
}

fn chunk_len(chunk: &pb::Chunk) -> u64 {
    chunk
        .ranges
        .iter()
        .fold(0u64, |sum, r| sum.saturating_add(r.length))
}

/// A fetch under way for one chunk item.
enum Pending {
    /// A fetch of this chunk alone.
    Task(JoinHandle<ClientResult<Bytes>>),
    /// This chunk's share of a batched fetch: the group's task sends it its bytes or its error.
    Batched(oneshot::Receiver<Result<Bytes, String>>),
}

impl Pending {
    /// The chunk's bytes, or why this copy could not give them.
    async fn wait(self, worker: &str) -> Result<Bytes, String> {
        match self {
            Pending::Task(task) => match task.await {
                Ok(result) => result.map_err(|e| e.to_string()),
                Err(e) => Err(format!("fetch task for {worker} failed: {e}")),
            },
            Pending::Batched(answer) => answer
                .await
                .unwrap_or_else(|_| Err(format!("batched fetch task for {worker} ended"))),
        }
    }

    fn abort(&self) {
        if let Pending::Task(task) = self {
            task.abort();
        }
    }
}

enum Item {
    Chunk {
        partition: u32,
        copy: CopySource,
        /// Copies holding the same batches, to read instead if this one fails.
        alternates: Vec<CopySource>,
        chunk: pb::Chunk,
        fetch: Option<Pending>,
    },
    End {
        layout: usize,
        /// Why copies of the partition could not be opened or are missing, for a data-loss
        /// report.
        unread: Vec<String>,
    },
}

/// A partition of a batch being opened: its reads, planned.
struct Planned {
    index: usize,
    id: u32,
    /// The reads of each epoch: (epoch, copies holding the same batches).
    reads: Vec<(u32, Vec<CopySource>)>,
    unread: Vec<String>,
}

/// The result of one worker's batched open: each of its reads' chunks, or why not.
type Opened = Vec<Result<Vec<pb::Chunk>, String>>;

/// A batch of partitions whose first copies are being opened.
struct Opening {
    planned: Vec<Planned>,
    /// Why the partition after the planned ones cannot be read (an impossible layout).
    error: Option<ClientError>,
    /// Per worker: the reads it opens (their numbers), how many, and the task.
    tasks: Vec<(Vec<usize>, usize, JoinHandle<Opened>)>,
    read_count: usize,
}

/// How a wait for a chunk ended.
enum Waited {
    /// The copy answered: the chunk's bytes, or why the copy could not give them.
    Fetched(Result<Bytes, String>),
    /// Another copy answered first: its chunk items, to read instead.
    OtherCopy(Vec<Item>),
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
    /// The window cost of the chunk items in `queue`.
    queued: u64,
    /// The window cost of the chunk items in `queue` whose fetch was started.
    in_flight: u64,
    /// Tasks of batched fetches, aborted with the reader.
    groups: Vec<JoinHandle<()>>,
    /// The next batch of partitions, being opened ahead of the reader.
    opening: Option<Opening>,
    /// Partitions (indexes into the layout) whose copies were asked for again.
    refreshed: HashSet<usize>,
    /// Stored bytes (batch heads included) of every batch taken so far.
    bytes_read: u64,
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
                fetch: Some(pending),
                ..
            } = item
            {
                pending.abort();
            }
        }
        for group in &self.groups {
            group.abort();
        }
        if let Some(opening) = &self.opening {
            for (_, _, task) in &opening.tasks {
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
            queued: 0,
            in_flight: 0,
            groups: Vec::new(),
            opening: None,
            refreshed: HashSet::new(),
            bytes_read: 0,
        })
    }

    /// The stored bytes (as written, compressed, batch heads included) of every batch this
    /// reader has taken so far, each batch counted once however many copies brought it. Once
    /// the reader has reached its end this is the sum of the writers' partition sizes for its
    /// range: what Spark reports as the shuffle read size.
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read
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
            match self.pop_item() {
                None => return Ok(None),
                Some(Item::Chunk {
                    partition,
                    copy,
                    alternates,
                    chunk,
                    fetch,
                }) => {
                    let pending = fetch.unwrap_or_else(|| {
                        Pending::Task(self.spawn_fetch(&copy, &chunk, !alternates.is_empty()))
                    });
                    let fetched = match self
                        .wait_or_hedge(partition, &copy, &alternates, pending)
                        .await
                    {
                        Waited::Fetched(fetched) => fetched.map_err(Unusable::Copy),
                        Waited::OtherCopy(items) => {
                            self.inner.metrics.hedge();
                            self.fetcher.mark_slow(&copy.worker);
                            tracing::info!(shuffle = %self.key, partition, worker = %copy.worker, "copy slow to answer, reading another copy");
                            self.drop_copy(&copy);
                            self.queue_front(items);
                            continue;
                        }
                    };
                    match fetched.and_then(|bytes| self.take_chunk(partition, bytes)) {
                        Ok(()) => {}
                        Err(Unusable::Copy(reason)) => {
                            self.fail_over(partition, &copy, alternates, reason).await
                        }
                        Err(Unusable::Lost(error)) => return Err(error),
                    }
                }
                Some(Item::End { layout, unread }) => self.end_partition(layout, unread).await?,
            }
        }
    }

    /// Waits for a chunk of `copy`. When other copies hold the same batches and `copy` has not
    /// answered within its hedge delay ([`crate::latency::PeerLatency::hedge_after`]), opens
    /// the next of them meanwhile: whichever answers first wins. When the other copy wins,
    /// this chunk is abandoned for its chunk items.
    async fn wait_or_hedge(
        &self,
        partition: u32,
        copy: &CopySource,
        alternates: &[CopySource],
        pending: Pending,
    ) -> Waited {
        let wait = pending.wait(&copy.worker);
        tokio::pin!(wait);
        if alternates.is_empty() {
            return Waited::Fetched(wait.await);
        }
        let hedge_after = self.inner.latency.hedge_after(&copy.worker);
        if let Ok(fetched) = tokio::time::timeout(hedge_after, &mut wait).await {
            return Waited::Fetched(fetched);
        }
        let other = self.open_copies(partition, alternates.iter().cloned().collect(), Vec::new());
        tokio::pin!(other);
        tokio::select! {
            biased;
            fetched = &mut wait => Waited::Fetched(fetched),
            opened = &mut other => match opened {
                Ok(mut items) => {
                    // The slow copy still stands in if the other one fails later.
                    for item in &mut items {
                        if let Item::Chunk { alternates, .. } = item {
                            alternates.push(copy.clone());
                        }
                    }
                    Waited::OtherCopy(items)
                }
                // The other copies cannot stand in: keep waiting on this one.
                Err(_) => Waited::Fetched(wait.await),
            },
        }
    }

    /// Puts the copies on slow workers last (they hold the same batches, so any may be read
    /// first): those this reader moved away from, and those whose round trips are far above
    /// the fastest copy's ([`SLOW_COPY_FACTOR`], at least [`SLOW_COPY_FLOOR`]). Otherwise the
    /// placement's order stays.
    fn order_by_speed(&self, copies: &mut [CopySource]) {
        if copies.len() < 2 {
            return;
        }
        let srtt = |copy: &CopySource| self.inner.latency.srtt(&copy.worker);
        let fastest = copies.iter().filter_map(srtt).min();
        let bar = fastest.map(|f| (f * SLOW_COPY_FACTOR).max(SLOW_COPY_FLOOR));
        // A stable sort: copies equally fast or slow keep the placement's order.
        copies.sort_by_cached_key(|copy| {
            self.fetcher.is_slow(&copy.worker)
                || matches!(
                    (srtt(copy), bar),
                    (Some(s), Some(bar)) if s > bar
                )
        });
    }

    /// Drops the queued chunks of `failed` (aborting their fetches).
    fn drop_copy(&mut self, failed: &CopySource) {
        let (mut queued, mut in_flight) = (0, 0);
        self.queue.retain(|item| match item {
            Item::Chunk {
                copy, fetch, chunk, ..
            } if copy == failed => {
                queued += cost(chunk);
                if let Some(pending) = fetch {
                    pending.abort();
                    in_flight += cost(chunk);
                }
                false
            }
            _ => true,
        });
        self.queued -= queued;
        self.in_flight -= in_flight;
    }

    /// Queues `items` at the front, in their order.
    fn queue_front(&mut self, items: Vec<Item>) {
        for item in items.into_iter().rev() {
            self.count_queued(&item);
            self.queue.push_front(item);
        }
    }

    /// The fetch-ahead window: `prefetch_chunks` units.
    fn window(&self) -> u64 {
        self.inner.config.prefetch_chunks.max(1) as u64 * FETCH_BATCH_BYTES
    }

    /// Takes the front item off the queue.
    fn pop_item(&mut self) -> Option<Item> {
        let item = self.queue.pop_front()?;
        if let Item::Chunk { chunk, fetch, .. } = &item {
            let cost = cost(chunk);
            self.queued -= cost;
            if fetch.is_some() {
                self.in_flight -= cost;
            }
        }
        Some(item)
    }

    /// Counts a chunk item entering the queue (without a fetch).
    fn count_queued(&mut self, item: &Item) {
        if let Item::Chunk { chunk, .. } = item {
            self.queued += cost(chunk);
        }
    }

    /// Opens the next partitions' streams, a batch at a time, until twice the fetch-ahead window
    /// is queued. The open of the batch after is started before this one is awaited, so it runs
    /// while the reader takes what is queued.
    async fn fill(&mut self) -> ClientResult<()> {
        let target = 2 * self.window();
        while self.queue.is_empty() || self.queued < target {
            let Some(opening) = self.opening.take().or_else(|| self.begin_next()) else {
                break;
            };
            self.opening = self.begin_next();
            self.finish_open(opening).await?;
        }
        Ok(())
    }

    /// Starts opening the next batch of partitions, if any are left: about a window's worth by
    /// the sizes their copies reported at commit (one large partition alone), at most
    /// [`OPEN_BATCH`].
    fn begin_next(&mut self) -> Option<Opening> {
        let start = self.next_layout;
        let mut end = start;
        let mut expected = 0u64;
        while end < self.layout.partitions.len()
            && end - start < OPEN_BATCH
            && (end == start || expected < self.window())
        {
            let size = self.layout.partitions[end]
                .locations
                .iter()
                .filter(|l| l.ok)
                .map(|l| l.stats.unwrap_or_default().bytes)
                .max()
                .unwrap_or(0);
            expected = expected.saturating_add(size.max(MIN_COST));
            end += 1;
        }
        self.next_layout = end;
        (start < end).then(|| self.begin_open(start..end))
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

    /// Plans the reads of the layout's partitions `indexes` and starts opening the first copy
    /// of every read: one batched request per worker, the workers at once.
    fn begin_open(&self, indexes: Range<usize>) -> Opening {
        let mut planned = Vec::with_capacity(indexes.len());
        let mut error = None;
        for index in indexes {
            let partition = &self.layout.partitions[index];
            let id = partition.partition;
            let epochs = Epoch::group(&partition.locations, |location| {
                let worker = self
                    .layout
                    .workers
                    .get(location.worker as usize)
                    .ok_or_else(|| {
                        format!("the layout names an unknown worker {}", location.worker)
                    })?;
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
            .map_err(|reason| self.lost(id, reason));
            let epochs = match epochs {
                Ok(epochs) => epochs,
                Err(e) => {
                    // Reported once the partitions before it are queued.
                    error = Some(e);
                    break;
                }
            };
            let mut reads = Vec::new();
            let mut unread = Vec::new();
            for epoch in epochs {
                let epoch_reads = epoch.reads();
                if epoch_reads.is_empty() && !epoch.failed.is_empty() {
                    // An epoch with no committed copy may have held nothing acknowledged (a
                    // revive moved the partition before any push to it succeeded).
                    unread.push(format!(
                        "epoch {} has no committed copy ({})",
                        epoch.epoch,
                        epoch.failed.join("; ")
                    ));
                }
                reads.extend(epoch_reads.into_iter().map(|mut copies| {
                    self.order_by_speed(&mut copies);
                    (epoch.epoch, copies)
                }));
            }
            planned.push(Planned {
                index,
                id,
                reads,
                unread,
            });
        }

        // The first copy of every read, grouped by worker: (read number, location).
        let mut by_worker: HashMap<String, (Vec<usize>, Vec<pb::LocationRef>, bool)> =
            HashMap::new();
        let mut read_count = 0;
        for plan in &planned {
            for (_, copies) in &plan.reads {
                let first = &copies[0];
                let (reads, locations, stand_in) = by_worker
                    .entry(first.worker.clone())
                    .or_insert_with(|| (Vec::new(), Vec::new(), true));
                reads.push(read_count);
                locations.push(first.location.clone());
                *stand_in &= copies.len() > 1;
                read_count += 1;
            }
        }
        let (start_map, end_map) = (self.maps.start, Some(self.maps.end));
        let tasks: Vec<_> = by_worker
            .into_iter()
            .map(|(worker, (reads, locations, stand_in))| {
                let fetcher = self.fetcher.clone();
                let count = reads.len();
                let task = tokio::spawn(async move {
                    fetcher
                        .open_streams(&worker, locations, start_map, end_map, stand_in)
                        .await
                });
                (reads, count, task)
            })
            .collect();
        Opening {
            planned,
            error,
            tasks,
            read_count,
        }
    }

    /// Waits for the opens of `opening` and queues its partitions' chunks and end markers, in
    /// order. A read whose first copy could not be opened tries its other copies one by one.
    async fn finish_open(&mut self, opening: Opening) -> ClientResult<()> {
        let Opening {
            planned,
            error,
            tasks,
            read_count,
        } = opening;
        let mut opened: Vec<Option<Result<Vec<pb::Chunk>, String>>> = Vec::new();
        opened.resize_with(read_count, || None);
        for (reads, count, task) in tasks {
            let results = match task.await {
                Ok(results) => results,
                Err(e) => vec![Err(format!("open task failed: {e}")); count],
            };
            for (read, result) in reads.into_iter().zip(results) {
                opened[read] = Some(result);
            }
        }

        let mut opened = opened.into_iter();
        for plan in planned {
            let mut items = Vec::new();
            let mut unread = plan.unread;
            for (epoch, copies) in plan.reads {
                let first = opened
                    .next()
                    .flatten()
                    .unwrap_or_else(|| Err("the copy was not opened".to_string()));
                let result = match first {
                    Ok(chunks) => Ok(chunk_items(plan.id, &copies, chunks)),
                    Err(error) => {
                        let mut copies = VecDeque::from(copies);
                        let failed = copies.pop_front();
                        if !copies.is_empty() {
                            if let Some(failed) = failed {
                                tracing::warn!(shuffle = %self.key, partition = plan.id, worker = %failed.worker, error = %error, "copy unreadable, reading another copy");
                            }
                        }
                        self.open_copies(plan.id, copies, vec![error]).await
                    }
                };
                match result {
                    Ok(chunks) => items.extend(chunks),
                    // Other epochs may hold what it had: the check at the end decides.
                    Err(reason) => unread.push(format!("epoch {epoch}: {reason}")),
                }
            }
            for item in &items {
                self.count_queued(item);
            }
            self.queue.extend(items);
            self.queue.push_back(Item::End {
                layout: plan.index,
                unread,
            });
        }
        match error {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    /// Opens the first of `copies` (copies holding the same batches) that answers and returns
    /// its chunks, each carrying the copies after it as alternates; or why none could be opened
    /// (after `errors`, why earlier copies could not be).
    async fn open_copies(
        &self,
        partition: u32,
        copies: VecDeque<CopySource>,
        mut errors: Vec<String>,
    ) -> Result<Vec<Item>, String> {
        let mut copies = copies;
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
                    let mut all = vec![copy];
                    all.extend(copies);
                    return Ok(chunk_items(partition, &all, chunks));
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
        self.drop_copy(failed);
        let epoch = failed.location.epoch;
        if alternates.is_empty() {
            tracing::warn!(shuffle = %self.key, partition, epoch, worker = %failed.worker, error = %reason, "copy failed and no other copy holds its batches; the end-of-partition check decides");
            self.unread
                .push(format!("epoch {epoch} copy on {}: {reason}", failed.worker));
            return;
        }
        tracing::warn!(shuffle = %self.key, partition, epoch, worker = %failed.worker, error = %reason, "copy failed, reading another copy");
        match self
            .open_copies(partition, VecDeque::from(alternates), Vec::new())
            .await
        {
            Ok(items) => self.queue_front(items),
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

    /// Starts the fetches of the chunk items inside the fetch-ahead window: large chunks alone,
    /// small ones grouped per worker into batched fetches. Waits until a unit of the window is
    /// free, so a window of many small chunks is walked once per unit read, not once per chunk.
    fn start_fetches(&mut self) {
        let window = self.window();
        // Nothing to start: every queued chunk is under way, or the window has no free unit.
        if self.in_flight == self.queued
            || (self.in_flight > 0 && self.in_flight + FETCH_BATCH_BYTES > window)
        {
            return;
        }
        #[derive(Default)]
        struct Group {
            members: Vec<usize>,
            bytes: u64,
        }
        let mut singles = Vec::new();
        let mut groups: Vec<(String, Vec<usize>)> = Vec::new();
        let mut open: HashMap<&str, Group> = HashMap::new();
        let mut used = 0u64;
        for (i, item) in self.queue.iter().enumerate() {
            let Item::Chunk {
                copy, chunk, fetch, ..
            } = item
            else {
                continue;
            };
            let cost = cost(chunk);
            if used > 0 && used + cost > window {
                break;
            }
            used += cost;
            if fetch.is_some() {
                continue;
            }
            let len = chunk_len(chunk);
            if len > SMALL_CHUNK {
                singles.push(i);
                continue;
            }
            let group = open.entry(copy.worker.as_str()).or_default();
            if group.members.len() == FETCH_BATCH_CHUNKS || group.bytes + len > FETCH_BATCH_BYTES {
                groups.push((copy.worker.clone(), std::mem::take(&mut group.members)));
                group.bytes = 0;
            }
            group.members.push(i);
            group.bytes += len;
        }
        groups.extend(
            open.into_iter()
                .filter(|(_, group)| !group.members.is_empty())
                .map(|(worker, group)| (worker.to_string(), group.members)),
        );
        for i in singles {
            self.start_single(i);
        }
        for (worker, members) in groups {
            if members.len() == 1 {
                self.start_single(members[0]);
            } else {
                self.start_group(worker, members);
            }
        }
    }

    /// Starts the fetch of the chunk item at `i` of the queue, alone.
    fn start_single(&mut self, i: usize) {
        let (task, cost) = match &self.queue[i] {
            Item::Chunk {
                copy,
                chunk,
                alternates,
                ..
            } => (
                self.spawn_fetch(copy, chunk, !alternates.is_empty()),
                cost(chunk),
            ),
            Item::End { .. } => return,
        };
        if let Item::Chunk { fetch, .. } = &mut self.queue[i] {
            *fetch = Some(Pending::Task(task));
            self.in_flight += cost;
        }
    }

    /// Starts one batched fetch from `worker` for the chunk items at `members` of the queue;
    /// each item gets its own share of the answer.
    fn start_group(&mut self, worker: String, members: Vec<usize>) {
        let mut chunks = Vec::with_capacity(members.len());
        let mut shares = Vec::with_capacity(members.len());
        let mut stand_in = true;
        for i in members {
            if let Item::Chunk {
                copy,
                chunk,
                alternates,
                fetch,
                ..
            } = &mut self.queue[i]
            {
                let (tx, rx) = oneshot::channel();
                *fetch = Some(Pending::Batched(rx));
                self.in_flight += cost(chunk);
                stand_in &= !alternates.is_empty();
                chunks.push(pb::FetchChunkHeader {
                    location: Some(copy.location.clone()),
                    chunk: Some(chunk.clone()),
                });
                shares.push(tx);
            }
        }
        let fetcher = self.fetcher.clone();
        self.groups.retain(|group| !group.is_finished());
        self.groups.push(tokio::spawn(async move {
            match fetcher.fetch_chunks(&worker, chunks, stand_in).await {
                Ok(answers) => {
                    for (share, answer) in shares.into_iter().zip(answers) {
                        let _ = share.send(answer.map_err(|e| e.to_string()));
                    }
                }
                Err(error) => {
                    let reason = error.to_string();
                    for share in shares {
                        let _ = share.send(Err(reason.clone()));
                    }
                }
            }
        }));
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
            let stored_len = accepted.stored_len();
            if let Some(raw) = self.seen.take(accepted) {
                self.bytes_read += stored_len;
                if !raw.is_empty() {
                    self.out.push_back(raw);
                }
            }
        }
        Ok(())
    }

    async fn end_partition(&mut self, index: usize, mut unread: Vec<String>) -> ClientResult<()> {
        unread.append(&mut self.unread);
        let partition = &self.layout.partitions[index];
        if let Err(reason) = self.seen.check(self.expected_in_range(partition)) {
            // Copies failed: a draining worker may have handed them over since the layout was
            // read. Once per partition, read them where the master says they are now.
            if !unread.is_empty() && self.refreshed.insert(index) && self.reread(index).await? {
                return Ok(());
            }
            self.seen = Seen::default();
            let mut reason = reason;
            for note in &unread {
                reason.push_str("; ");
                reason.push_str(note);
            }
            return Err(self.lost(self.layout.partitions[index].partition, reason));
        }
        self.seen = Seen::default();
        if !unread.is_empty() {
            let partition = self.layout.partitions[index].partition;
            tracing::info!(shuffle = %self.key, partition, unread = ?unread, "copies could not be read, but the others held every batch");
        }
        Ok(())
    }

    /// Asks the master for the copies of the layout's partition `index` again. When they moved
    /// (a draining worker handed them over), queues reads of them where they are now, ahead of
    /// everything queued, with a new end marker; what was taken stays taken (repeats are
    /// dropped). Returns whether it did.
    async fn reread(&mut self, index: usize) -> ClientResult<bool> {
        let p = self.layout.partitions[index].partition;
        let request = pb::GetShuffleLayoutRequest {
            shuffle: Some(self.key.to_pb()),
            start_partition: p,
            end_partition: p + 1,
            wait_ms: 0,
        };
        let fresh = self
            .inner
            .master
            .call(request, |mut master, request| async move {
                master.get_shuffle_layout(request).await
            })
            .await?;
        let Some(mut moved) = fresh.partitions.into_iter().find(|x| x.partition == p) else {
            return Ok(false);
        };
        for location in &mut moved.locations {
            let Some(info) = fresh.workers.get(location.worker as usize) else {
                return Ok(false);
            };
            location.worker = match self.layout.workers.iter().position(|w| w == info) {
                Some(known) => known as u32,
                None => {
                    self.layout.workers.push(info.clone());
                    (self.layout.workers.len() - 1) as u32
                }
            };
        }
        if moved.locations == self.layout.partitions[index].locations {
            return Ok(false);
        }
        tracing::info!(shuffle = %self.key, partition = p, "copies moved since the layout was read; reading them where they are now");
        self.layout.partitions[index] = moved;
        let behind = std::mem::take(&mut self.queue);
        let opening = self.begin_open(index..index + 1);
        let opened = self.finish_open(opening).await;
        self.queue.extend(behind);
        opened.map(|()| true)
    }
}

/// The chunk items of one copy of `partition`: `copies[0]` is read, the copies after it stand in.
fn chunk_items(partition: u32, copies: &[CopySource], chunks: Vec<pb::Chunk>) -> Vec<Item> {
    let Some((copy, alternates)) = copies.split_first() else {
        return Vec::new();
    };
    chunks
        .into_iter()
        .map(|chunk| Item::Chunk {
            partition,
            copy: copy.clone(),
            alternates: alternates.to_vec(),
            chunk,
            fetch: None,
        })
        .collect()
}
