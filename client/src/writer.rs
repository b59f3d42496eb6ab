//! The push writer of one map attempt.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_protocol::batch::{BatchBuf, BatchTag, BATCH_HEAD_LEN, MAX_BATCH_LEN};
use sluice_protocol::connection::OutFrame;
use sluice_protocol::frame::MessageType;
use sluice_protocol::{pb, ErrorCode};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::backoff::Backoff;
use crate::error::{ClientError, ClientResult};
use crate::{Inner, ShuffleHandle};

/// What a finished map wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapOutput {
    /// Bytes stored per partition (compressed batches with their heads): what readers fetch.
    /// When another attempt won, that attempt's figures: its output is the map's.
    pub partition_bytes: Vec<u64>,
    /// Raw bytes written per partition by this attempt.
    pub raw_bytes: Vec<u64>,
    /// The attempt whose output counts for this map; not this writer's attempt when another
    /// attempt ended first.
    pub winning_attempt: u32,
}

#[derive(Debug, Default)]
struct PendingPush {
    slices: Vec<pb::PushSlice>,
    body: Vec<Bytes>,
    len: usize,
}

pub struct ShuffleWriter {
    inner: Arc<Inner>,
    handle: Arc<ShuffleHandle>,
    map_id: u32,
    attempt: u32,
    /// Per partition, the batch being filled: records are appended behind the room for its
    /// head, so a batch that is not compressed is sent from the very buffer it was built in.
    buffers: Vec<BatchBuf>,
    buffered: usize,
    /// Buffers of compressed batches, kept for the next batches (at most [`SPARE_BUFFERS`]).
    spare: Vec<Vec<u8>>,
    /// The id of the next batch; `None` once every id was used (ids never wrap: a repeated id
    /// would make readers drop the batch as a repeat).
    next_batch_id: Option<u32>,
    stats: Vec<pb::BatchStats>,
    raw: Vec<u64>,
    /// Batches waiting to be pushed, by primary push address.
    pending: HashMap<Arc<str>, PendingPush>,
    inflight: JoinSet<ClientResult<Pushed>>,
    permits: Arc<Semaphore>,
    /// The shuffle was committed while this attempt was writing: another attempt of this map
    /// won. The rest of this attempt's output is dropped and `finish` reports the winner's (or
    /// fails, should the master name this attempt the winner after all).
    stage_ended: bool,
}

/// Buffers of compressed batches a writer keeps for its next batches: a batch is cut every few
/// records of a busy partition, and allocating its buffer anew (and growing it record by record)
/// costs more than the copy of the records themselves.
const SPARE_BUFFERS: usize = 4;

/// Where a partition's new batch starts when the partition has not filled a batch yet: it grows
/// by doubling from there.
const INITIAL_BUFFER: usize = 4 << 10;

/// Bytes handed to [`ShuffleWriter::append`].
enum Record<'a> {
    Borrowed(&'a [u8]),
    Owned(BatchBuf),
}

impl Record<'_> {
    fn as_slice(&self) -> &[u8] {
        match self {
            Record::Borrowed(bytes) => bytes,
            Record::Owned(batch) => batch.raw(),
        }
    }

    fn len(&self) -> usize {
        self.as_slice().len()
    }
}

/// How a push ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pushed {
    Acked,
    /// The worker refused it because the shuffle is committed.
    StageEnded,
}

impl std::fmt::Debug for ShuffleWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShuffleWriter")
            .field("shuffle", &self.handle.key)
            .field("map_id", &self.map_id)
            .field("attempt", &self.attempt)
            .finish()
    }
}

impl ShuffleWriter {
    pub(crate) fn new(
        inner: Arc<Inner>,
        handle: Arc<ShuffleHandle>,
        map_id: u32,
        attempt: u32,
    ) -> ClientResult<ShuffleWriter> {
        if map_id >= handle.num_maps {
            return Err(ClientError::InvalidArgument(format!(
                "map {map_id} of a shuffle with {} maps",
                handle.num_maps
            )));
        }
        let n = handle.num_partitions as usize;
        let permits = Arc::new(Semaphore::new(inner.config.max_inflight_pushes.max(1)));
        Ok(ShuffleWriter {
            buffers: std::iter::repeat_with(BatchBuf::default).take(n).collect(),
            buffered: 0,
            spare: Vec::new(),
            next_batch_id: Some(0),
            stats: vec![pb::BatchStats::default(); n],
            raw: vec![0; n],
            pending: HashMap::new(),
            inflight: JoinSet::new(),
            permits,
            stage_ended: false,
            inner,
            handle,
            map_id,
            attempt,
        })
    }

    /// Appends one record (or several whole records) to `partition`. The bytes of one call never
    /// straddle two batches, so readers get records whole.
    pub async fn write(&mut self, partition: u32, record: &[u8]) -> ClientResult<()> {
        if self.append_in_place(partition, record) {
            return Ok(());
        }
        self.append(partition, Record::Borrowed(record)).await
    }

    /// Appends `record` to `partition`'s buffer when that seals nothing, before or after, and
    /// returns whether it did. Most records of a per-record caller take this path, which never
    /// builds `append`'s future (it holds the state of every seal and send it may await): with
    /// 100-byte records, building it took about a tenth of the writing client's CPU.
    fn append_in_place(&mut self, partition: u32, record: &[u8]) -> bool {
        let batch_size = self.inner.config.batch_size.min(MAX_BATCH_LEN as usize);
        let max_buffered = self.inner.config.max_buffered;
        let p = partition as usize;
        let Some(buffer) = self.buffers.get_mut(p) else {
            return false;
        };
        let len = record.len();
        if self.stage_ended
            || buffer.capacity() == 0
            || buffer.raw_len() + len >= batch_size
            || self.buffered + len > max_buffered
        {
            return false;
        }
        buffer.extend_from_slice(record);
        self.buffered += len;
        self.raw[p] += len as u64;
        true
    }

    /// [`write`](Self::write) for bytes the caller built as a batch and hands over: when the
    /// partition's buffer is empty they become the buffer, with no copy (the JVM bridge hands
    /// over whole serialized chunks of about a batch each, so most chunks are never copied
    /// again, and not at all when they are not compressed).
    pub async fn write_owned(&mut self, partition: u32, record: BatchBuf) -> ClientResult<()> {
        self.append(partition, Record::Owned(record)).await
    }

    async fn append(&mut self, partition: u32, record: Record<'_>) -> ClientResult<()> {
        let p = partition as usize;
        if p >= self.buffers.len() {
            return Err(ClientError::InvalidArgument(format!(
                "partition {partition} of a shuffle with {} partitions",
                self.buffers.len()
            )));
        }
        if record.len() > MAX_BATCH_LEN as usize {
            return Err(ClientError::InvalidArgument(format!(
                "record of {} bytes exceeds the largest batch ({MAX_BATCH_LEN} bytes)",
                record.len()
            )));
        }
        if self.stage_ended {
            return Ok(());
        }
        let batch_size = self.inner.config.batch_size;
        if !self.buffers[p].is_empty() && self.buffers[p].raw_len() + record.len() > batch_size {
            self.seal(p).await?;
        }
        let len = record.len();
        match record {
            Record::Owned(batch) if self.buffers[p].is_empty() => self.buffers[p] = batch,
            record => {
                if self.buffers[p].capacity() == 0 {
                    self.buffers[p] = self.new_buffer(p, len);
                }
                self.buffers[p].extend_from_slice(record.as_slice());
            }
        }
        self.buffered += len;
        self.raw[p] += len as u64;
        if self.buffers[p].raw_len() >= batch_size {
            self.seal(p).await?;
        } else if self.buffered > self.inner.config.max_buffered {
            self.seal_all().await?;
        }
        Ok(())
    }

    /// An empty batch to build `raw` bytes in and hand to [`write_owned`](Self::write_owned):
    /// one of the writer's spare buffers when it has one, so a caller handing over a batch per
    /// call (the JVM bridge) does not allocate one each time.
    pub fn take_buffer(&mut self, raw: usize) -> BatchBuf {
        match self.spare.pop() {
            Some(spare) => BatchBuf::reuse(spare),
            None => BatchBuf::with_capacity(raw),
        }
    }

    /// The buffer for partition `p`'s next batch, whose first record is `len` bytes: a spare one,
    /// else one sized for a whole batch when the partition filled one before (and every
    /// partition's whole batch fits in twice `max_buffered`), else a small one.
    fn new_buffer(&mut self, p: usize, len: usize) -> BatchBuf {
        let batch_size = self.inner.config.batch_size;
        let busy = self.raw[p] >= batch_size as u64
            && self.buffers.len().saturating_mul(batch_size) <= 2 * self.inner.config.max_buffered;
        self.take_buffer(if busy {
            batch_size
        } else {
            len.max(INITIAL_BUFFER).min(batch_size)
        })
    }

    /// Cuts every buffer into batches, sends them and waits until the workers acked every push
    /// (Spark asks a task to spill: afterwards this writer holds no data).
    pub async fn flush(&mut self) -> ClientResult<()> {
        self.seal_all().await?;
        let addrs: Vec<Arc<str>> = self.pending.keys().cloned().collect();
        for addr in addrs {
            self.send(addr).await?;
        }
        while let Some(done) = self.inflight.join_next().await {
            self.pushed(done)?;
        }
        Ok(())
    }

    fn pushed(
        &mut self,
        joined: Result<ClientResult<Pushed>, tokio::task::JoinError>,
    ) -> ClientResult<()> {
        let pushed = joined
            .map_err(|e| ClientError::InvalidArgument(format!("push task failed: {e}")))??;
        if pushed == Pushed::StageEnded && !self.stage_ended {
            tracing::info!(shuffle = %self.handle.key, map = self.map_id, attempt = self.attempt, "shuffle already committed: another attempt of this map won, dropping this one's output");
            self.stage_ended = true;
            for buffer in &mut self.buffers {
                *buffer = BatchBuf::default();
            }
            self.spare.clear();
            self.buffered = 0;
            self.pending.clear();
        }
        Ok(())
    }

    /// Raw bytes buffered and not yet cut into batches.
    pub fn buffered_bytes(&self) -> usize {
        self.buffered
    }

    async fn seal_all(&mut self) -> ClientResult<()> {
        for p in 0..self.buffers.len() {
            if !self.buffers[p].is_empty() {
                self.seal(p).await?;
            }
        }
        Ok(())
    }

    async fn seal(&mut self, p: usize) -> ClientResult<()> {
        if self.stage_ended {
            return Ok(());
        }
        let batch_id = self.next_batch_id.ok_or_else(|| {
            ClientError::InvalidArgument(format!(
                "map {} attempt {} of shuffle {} ran out of batch ids ({} batches); use larger batches",
                self.map_id,
                self.attempt,
                self.handle.key,
                u64::from(u32::MAX) + 1
            ))
        })?;
        self.next_batch_id = batch_id.checked_add(1);
        let buffer = std::mem::take(&mut self.buffers[p]);
        self.buffered -= buffer.raw_len();
        let tag = BatchTag {
            partition: p as u32,
            map_id: self.map_id,
            attempt: self.attempt,
            batch_id,
        };
        let (head, bytes, spare) = buffer
            .seal(tag, self.inner.config.compression)
            .map_err(|e| ClientError::InvalidArgument(e.to_string()))?;
        let batch_size = self.inner.config.batch_size;
        if let Some(spare) = spare.filter(|s| s.capacity() <= BATCH_HEAD_LEN + 2 * batch_size) {
            if self.spare.len() < SPARE_BUFFERS {
                self.spare.push(spare);
            }
        }
        self.stats[p].add(bytes.len() as u64, head.crc);
        let route = self.handle.route(p as u32);
        let pending = self.pending.entry(route.primary.clone()).or_default();
        pending.slices.push(pb::PushSlice {
            partition: p as u32,
            epoch: route.epoch,
            length: bytes.len() as u32,
        });
        pending.len += bytes.len();
        pending.body.push(bytes);
        if pending.len >= self.inner.config.push_size {
            self.send(route.primary).await?;
        }
        Ok(())
    }

    async fn send(&mut self, addr: Arc<str>) -> ClientResult<()> {
        if self.stage_ended {
            return Ok(());
        }
        let Some(push) = self.pending.remove(&addr) else {
            return Ok(());
        };
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ClientError::InvalidArgument("writer closed".into()))?;
        while let Some(done) = self.inflight.try_join_next() {
            self.pushed(done)?;
        }
        if self.stage_ended {
            return Ok(());
        }
        self.inflight.spawn(push_with_revive(
            self.inner.clone(),
            self.handle.clone(),
            addr,
            push.slices,
            push.body,
            permit,
        ));
        Ok(())
    }

    /// Sends everything, waits for every ack, reports the map's end to the master and returns
    /// what this attempt wrote.
    pub async fn finish(mut self) -> ClientResult<MapOutput> {
        self.flush().await?;
        let partitions: Vec<pb::PartitionStats> = self
            .stats
            .iter()
            .enumerate()
            .filter(|(_, s)| s.batches > 0)
            .map(|(p, s)| pb::PartitionStats {
                partition: p as u32,
                stats: Some(*s),
            })
            .collect();
        let request = pb::MapperEndRequest {
            shuffle: Some(self.handle.key.to_pb()),
            map_id: self.map_id,
            attempt: self.attempt,
            partitions,
        };
        self.inner.session(&self.handle.key.app_id).await?;
        let response = self
            .inner
            .master
            .call(request, |mut master, request| async move {
                master.mapper_end(request).await
            })
            .await?;
        if self.stage_ended && response.winning_attempt == self.attempt {
            // Pushes were refused as committed, so part of this attempt's output was dropped,
            // yet the master counts this attempt's output as the map's: succeeding would report
            // sizes for batches that were never stored.
            return Err(self
                .inner
                .metrics
                .check_loss(ClientError::IncompleteOutput {
                    shuffle: self.handle.key.to_string(),
                    map_id: self.map_id,
                    attempt: self.attempt,
                }));
        }
        let partition_bytes = if response.winning_attempt == self.attempt {
            self.stats.iter().map(|s| s.bytes).collect()
        } else {
            let mut bytes = vec![0; self.stats.len()];
            for p in &response.winner_partitions {
                if let Some(slot) = bytes.get_mut(p.partition as usize) {
                    *slot = p.stats.map_or(0, |s| s.bytes);
                }
            }
            bytes
        };
        Ok(MapOutput {
            partition_bytes,
            raw_bytes: std::mem::take(&mut self.raw),
            winning_attempt: response.winning_attempt,
        })
    }
}

/// Same-location retries of a push the worker answered `Busy` before reviving it elsewhere.
const BUSY_RETRIES: u32 = 3;
/// The first and the longest wait between a push's retries.
const PUSH_BACKOFF_FIRST: Duration = Duration::from_millis(5);
const PUSH_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Sends one push. When it fails (worker unreachable, busy, disk full, replica failed, location
/// not reserved), asks the master for new locations of its partitions (a revive, for all of the
/// push's partitions at once) and re-sends its batches there, until acked or the retry timeout
/// passes. A re-sent push may have been applied already; readers drop the repeated batches.
async fn push_with_revive(
    inner: Arc<Inner>,
    handle: Arc<ShuffleHandle>,
    addr: Arc<str>,
    slices: Vec<pb::PushSlice>,
    body: Vec<Bytes>,
    permit: OwnedSemaphorePermit,
) -> ClientResult<Pushed> {
    let started = Instant::now();
    let mut backoff = Backoff::new(PUSH_BACKOFF_FIRST, PUSH_BACKOFF_MAX);
    let mut work = vec![(addr, slices, body)];
    let metrics = &inner.metrics;
    while let Some((addr, slices, body)) = work.pop() {
        let mut busy = 0;
        let bytes: u64 = body.iter().map(|b| b.len() as u64).sum();
        loop {
            let header = pb::PushHeader {
                shuffle: Some(handle.key.to_pb()),
                slices: slices.clone(),
                role: pb::Role::Primary as i32,
            };
            let kind = if slices.len() == 1 {
                MessageType::PushData
            } else {
                MessageType::PushMergedData
            };
            let frame = OutFrame::new(kind, 0, &header).with_body(body.clone());
            let session = inner.session(&handle.key.app_id).await?;
            let sent = Instant::now();
            let error = match inner
                .call_worker(session, &addr, frame, MessageType::Ack)
                .await
            {
                Ok(_) => {
                    metrics.push_round_trip(sent.elapsed());
                    metrics.pushed(bytes);
                    break;
                }
                Err(error) => error,
            };
            let code = error.code();
            if code == ErrorCode::Committed {
                return Ok(Pushed::StageEnded);
            }
            if code == ErrorCode::InvalidRequest
                || started.elapsed() > inner.config.push_retry_timeout
            {
                return Err(ClientError::Push {
                    worker: addr.to_string(),
                    source: error,
                });
            }
            if code == ErrorCode::Busy && busy < BUSY_RETRIES {
                busy += 1;
                metrics.push_retry();
                backoff.wait().await;
                continue;
            }
            // Move these partitions elsewhere and send each batch to its new location.
            let reason = error.to_string();
            tracing::debug!(worker = %addr, error = %reason, partitions = slices.len(), "push failed, reviving");
            let revived = revive(&inner, &handle, &slices, &reason).await;
            if let Err(e) = revived {
                if e.code() == ErrorCode::Committed {
                    return Ok(Pushed::StageEnded);
                }
                if !e.code().is_retryable() {
                    return Err(e);
                }
                metrics.push_retry();
                backoff.wait().await;
                continue;
            }
            // Sent again below, to the revived locations.
            metrics.push_retry();
            let mut moved: HashMap<Arc<str>, (Vec<pb::PushSlice>, Vec<Bytes>)> = HashMap::new();
            for (slice, bytes) in slices.iter().zip(&body) {
                let route = handle.route(slice.partition);
                let (slices, body) = moved.entry(route.primary).or_default();
                slices.push(pb::PushSlice {
                    epoch: route.epoch,
                    ..*slice
                });
                body.push(bytes.clone());
            }
            if moved.contains_key(&addr) {
                // No other worker could take them: give this one a moment.
                backoff.wait().await;
            }
            work.extend(moved.into_iter().map(|(addr, (s, b))| (addr, s, b)));
            break;
        }
    }
    drop(permit);
    Ok(Pushed::Acked)
}

/// Asks the master for new locations of the partitions of `slices` (unless another push moved
/// them already) and takes them into `handle`.
async fn revive(
    inner: &Inner,
    handle: &ShuffleHandle,
    slices: &[pb::PushSlice],
    reason: &str,
) -> ClientResult<()> {
    let mut failed: Vec<pb::FailedLocation> = slices
        .iter()
        .map(|s| pb::FailedLocation {
            partition: s.partition,
            epoch: s.epoch,
        })
        .collect();
    failed.sort_by_key(|f| (f.partition, f.epoch));
    failed.dedup();
    // One revive at a time per shuffle: pushes that failed together (a slow or dead worker
    // fails every push in flight to it) wait for the first, then ask only for what it did not
    // move, so a sick worker costs a few revives, not one per push.
    let _turn = handle.revive_turn.lock().await;
    failed.retain(|f| handle.route(f.partition).epoch <= f.epoch);
    if failed.is_empty() {
        return Ok(());
    }
    inner.metrics.revive();
    let request = pb::ReviveRequest {
        shuffle: Some(handle.key.to_pb()),
        failed,
        reason: reason.to_string(),
    };
    inner.session(&handle.key.app_id).await?;
    let response = inner
        .master
        .call(request, |mut master, request| async move {
            master.revive(request).await
        })
        .await?;
    handle.revived(&response.locations);
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use sluice_protocol::{pb, ShuffleKey};

    use crate::{ClientConfig, ClientError, ShuffleHandle, SluiceClient};

    /// A handle on one partition of one (unreachable) worker: nothing is pushed as long as the
    /// batches stay below the push size, and the master connects lazily.
    fn one_partition(name: &str) -> Arc<ShuffleHandle> {
        let locations = pb::ShuffleLocations {
            workers: vec![pb::WorkerInfo {
                id: "w".into(),
                host: "127.0.0.1".into(),
                push_port: 1,
                fetch_port: 1,
                ..Default::default()
            }],
            primary_worker: vec![0],
            epoch: vec![0],
            replica_worker: vec![u32::MAX],
        };
        Arc::new(ShuffleHandle::new(
            ShuffleKey::new(name, 0),
            1,
            1,
            locations,
        ))
    }

    #[tokio::test]
    async fn records_fill_a_batch_whole_and_the_buffered_bytes_stay_bounded() {
        let client = SluiceClient::new(ClientConfig {
            batch_size: 10,
            max_buffered: 14,
            ..ClientConfig::new("127.0.0.1:1")
        })
        .unwrap();
        let mut writer = client.writer(one_partition("fill"), 0, 0).unwrap();
        // Three records of 3 bytes fit a batch of 10; the fourth starts the next batch.
        let mut raw = Vec::new();
        for record in [b"abc", b"def", b"ghi"] {
            writer.write(0, record).await.unwrap();
            raw.extend_from_slice(record);
            assert_eq!(writer.buffers[0].raw(), &raw[..]);
            assert_eq!(writer.stats[0].batches, 0);
        }
        writer.write(0, b"jkl").await.unwrap();
        assert_eq!(writer.stats[0].batches, 1);
        assert_eq!(writer.buffers[0].raw(), b"jkl");
        // A record that reaches the batch size seals it at once.
        writer.write(0, b"mnopqrs").await.unwrap();
        assert_eq!(writer.stats[0].batches, 2);
        assert!(writer.buffers[0].is_empty());
        // More than `max_buffered` across batches sealed but not yet pushed, and in buffers,
        // is sealed; what is buffered never passes it.
        for _ in 0..20 {
            writer.write(0, b"tu").await.unwrap();
            assert!(writer.buffers[0].raw_len() < 10);
            assert!(writer.buffered <= 14, "{}", writer.buffered);
        }
    }

    #[tokio::test]
    async fn running_out_of_batch_ids_is_an_error_not_a_wrap() {
        let client = SluiceClient::new(ClientConfig {
            batch_size: 4,
            ..ClientConfig::new("127.0.0.1:1")
        })
        .unwrap();
        let mut writer = client.writer(one_partition("ids"), 0, 0).unwrap();
        writer.next_batch_id = Some(u32::MAX - 1);
        // Batch ids u32::MAX - 1 and u32::MAX are still free.
        writer.write(0, b"abcd").await.unwrap();
        writer.write(0, b"efgh").await.unwrap();
        assert_eq!(writer.stats[0].batches, 2);
        let error = writer.write(0, b"ijkl").await.unwrap_err();
        assert!(
            matches!(error, ClientError::InvalidArgument(ref m) if m.contains("ran out of batch ids")),
            "{error}"
        );
        assert_eq!(writer.stats[0].batches, 2, "no batch with a wrapped id");
    }
}
