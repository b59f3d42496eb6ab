//! One partition location on this worker: a memory buffer, an append-only data file and its batch
//! index.
//!
//! Pushed slices (whole batches, zero-copy `Bytes` that carry their memory lease) queue in
//! `pending`. Once `flush_buffer_size` is pending, or the oldest pending byte is older than
//! `max_buffer_age`, or under memory pressure, or at commit, the pending slices go to the disk's
//! flusher as one sequential write at the file's tail, with their index entries as a second write
//! once the location has more than [`SMALL_INDEX`] bytes of them (until then they stay in memory,
//! and the location has no index file). Offsets are assigned when a batch is appended, so the file
//! layout does not depend on the order writes complete in. The memory comes back when the flusher
//! drops the written slices (their leases), not through this module.
//!
//! A location flushed before a restart and never committed comes back as `Recovered`: it takes no
//! pushes (writers revive elsewhere) but commits and serves what its files verifiably hold.

use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_protocol::batch::{self, BatchIter};
use sluice_protocol::pb;
use tokio::sync::{oneshot, Notify};

use super::disk::{Disk, FlushJob, IndexWrite};
use super::index::IndexEntry;
use super::layout::{CommitMarker, LocationFiles, LocationId};
use crate::error::{WorkerError, WorkerResult};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Status {
    Open,
    /// Flushed before a restart, never committed: no more appends; commit seals it as it is.
    Recovered,
    /// Commit started: no more appends; waiting for the last flushes.
    Sealing,
    Committed,
    Failed(String),
}

#[derive(Debug)]
struct State {
    status: Status,
    pending: Vec<Bytes>,
    pending_len: u64,
    pending_index: Vec<u8>,
    /// When the oldest pending slice arrived.
    pending_since: Option<Instant>,
    /// Whether the store lists this partition for aged flushes.
    listed: bool,
    /// Whether the data file exists (created by the first flush).
    created: bool,
    /// Whether the index file exists: created by the flush that takes the index past
    /// [`SMALL_INDEX`]; until then the index is kept in `memory_index` only.
    index_file: bool,
    /// Data-file offset where `pending` will be written.
    flushed_len: u64,
    index_len: u64,
    stats: pb::BatchStats,
    inflight: usize,
    /// Deleted: what it held on its disk was given back (once).
    discarded: bool,
    /// Every index entry flushed, while there is no index file.
    memory_index: Vec<u8>,
    /// Once committed without an index file: `memory_index`, for reads.
    committed_index: Option<Bytes>,
    /// Once a local location moved to the DFS as it outgrew its [`Spill`] size: the bytes and
    /// files it left on its disk, deleted when its commit completes the upload.
    left_on_disk: Option<(u64, u64)>,
}

/// Where a local location goes once it holds more than `above` bytes: the DFS.
#[derive(Debug)]
pub struct Spill {
    pub dfs: Arc<super::dfs::Dfs>,
    pub shuffle: sluice_protocol::ShuffleKey,
    pub id: LocationId,
    pub above: u64,
}

/// Index bytes a location keeps in memory instead of in an index file: ten entries. Creating a
/// file costs about 0.2 ms on a cloud disk, so a shuffle of 100k small partitions saves 100k
/// file creations (20 s) at the cost of 24 MB at most. The data file describes itself (every
/// batch starts with its head), so a restarted worker rebuilds such an index from it.
pub const SMALL_INDEX: usize = 10 * super::index::ENTRY_LEN;

/// What a location's files hold: for commit records, recovery and reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extent {
    pub data_len: u64,
    pub index_len: u64,
    pub stats: pb::BatchStats,
    pub created: bool,
    /// The index, when there is no index file (rebuilt from the data file).
    pub index: Option<Bytes>,
}

impl From<CommitMarker> for Extent {
    fn from(marker: CommitMarker) -> Extent {
        Extent {
            data_len: marker.data_len,
            index_len: marker.index_len,
            stats: marker.stats,
            created: marker.created,
            index: None,
        }
    }
}

/// What [`Partition::seal`] found.
#[derive(Debug, Clone, Copy)]
pub enum Sealed {
    /// Committed before: what it holds.
    Committed(pb::BatchStats),
    /// Flushed and sealed: its commit record, to write, and whether it has an index file.
    Ready(CommitMarker, bool),
}

/// The committed files of a location, for reading. Files are opened per request, so a worker
/// holding many partitions holds no descriptors for them.
#[derive(Debug, Clone)]
pub struct CommittedFiles {
    /// `None` when nothing was ever pushed to the location.
    pub files: Option<LocationFiles>,
    pub data_len: u64,
    pub index_len: u64,
    /// The whole index, when it is small enough to be kept in memory ([`SMALL_INDEX`]), or the
    /// location is on the DFS.
    pub index: Option<Bytes>,
    /// Where the location's data is, when it is on the DFS (then `files` is `None`).
    pub dfs: Option<super::dfs::DfsObject>,
}

#[derive(Debug)]
pub struct Partition {
    name: String,
    disk: Arc<Disk>,
    files: LocationFiles,
    state: Mutex<State>,
    flushed: Notify,
    /// On a primary with a replica: the replica's push address. Set by reservations.
    replica: Mutex<Option<String>>,
    /// A location kept on the DFS rather than on this worker's disk.
    dfs: OnceLock<super::dfs::DfsObject>,
    /// A location written to the DFS (from the start, or once it outgrew `spill`): its writer
    /// task.
    dfs_writer: OnceLock<tokio::sync::mpsc::UnboundedSender<super::dfs::WriteJob>>,
    /// How the commit of a location written to the DFS ended: its writer closes once, so a
    /// second commit running beside the first waits for the first's answer.
    dfs_committed: tokio::sync::OnceCell<Result<pb::BatchStats, String>>,
    /// Where this local location goes once it outgrows a size.
    spill: Option<Spill>,
}

impl Partition {
    pub fn new(name: String, disk: Arc<Disk>, files: LocationFiles) -> Partition {
        Partition {
            name,
            disk,
            files,
            state: Mutex::new(State {
                status: Status::Open,
                pending: Vec::new(),
                pending_len: 0,
                pending_index: Vec::new(),
                pending_since: None,
                listed: false,
                created: false,
                flushed_len: 0,
                index_len: 0,
                stats: pb::BatchStats::default(),
                inflight: 0,
                discarded: false,
                index_file: false,
                memory_index: Vec::new(),
                committed_index: None,
                left_on_disk: None,
            }),
            flushed: Notify::new(),
            replica: Mutex::new(None),
            dfs: OnceLock::new(),
            dfs_committed: tokio::sync::OnceCell::new(),
            dfs_writer: OnceLock::new(),
            spill: None,
        }
    }

    /// Moves this local location to the DFS once it holds more than `spill.above` bytes.
    pub fn with_spill(mut self, spill: Spill) -> Partition {
        self.spill = Some(spill);
        self
    }

    /// A location whose flushes go straight to the DFS (`object`, written by `writer`) rather
    /// than to `disk`: its index stays in memory, and its commit completes the upload.
    pub fn writing_to_dfs(
        name: String,
        disk: Arc<Disk>,
        files: LocationFiles,
        object: super::dfs::DfsObject,
        writer: tokio::sync::mpsc::UnboundedSender<super::dfs::WriteJob>,
    ) -> Partition {
        let mut partition = Partition::new(name, disk, files);
        let _ = partition.dfs.set(object);
        let _ = partition.dfs_writer.set(writer);
        // Nothing on this worker's disk to give back when it is deleted.
        partition
            .state
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .discarded = true;
        partition
    }

    /// Whether this location is written straight to the DFS.
    pub fn writes_to_dfs(&self) -> bool {
        self.dfs_writer.get().is_some()
    }

    /// Ends the commit of a location written to the DFS once it is sealed: completes the
    /// upload and writes the index object, then keeps its totals and index locally (as for a
    /// location handed over on the DFS) so a restart serves it again. A location that moved to
    /// the DFS as it outgrew its size deletes what it left on its disk.
    pub async fn finish_on_dfs(&self, marker: CommitMarker) -> Result<pb::BatchStats, String> {
        self.dfs_committed
            .get_or_init(|| self.close_on_dfs(marker))
            .await
            .clone()
    }

    /// [`Partition::finish_on_dfs`], run once.
    async fn close_on_dfs(&self, marker: CommitMarker) -> Result<pb::BatchStats, String> {
        let Some(writer) = self.dfs_writer.get() else {
            return Err("not written to the DFS".into());
        };
        let (entries, left_on_disk) = {
            let state = self.lock();
            (Bytes::from(state.memory_index.clone()), state.left_on_disk)
        };
        let (done, closed) = oneshot::channel();
        let closed = match writer.send(super::dfs::WriteJob::Close(entries, done)) {
            Ok(()) => closed
                .await
                .unwrap_or_else(|_| Err(std::io::Error::other("the DFS writer stopped"))),
            Err(_) => Err(std::io::Error::other("the DFS writer stopped")),
        };
        let recorded = match closed {
            Ok(index) => {
                let files = self.files.clone();
                let kept = index.clone();
                let recorded = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
                    if let Some(dir) = files.data.parent() {
                        std::fs::create_dir_all(dir)?;
                    }
                    std::fs::write(files.dfs_index(), &kept)?;
                    std::fs::write(files.dfs_marker(), marker.marker_text())?;
                    if left_on_disk.is_some() {
                        let _ = std::fs::remove_file(&files.index);
                        match std::fs::remove_file(&files.data) {
                            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                            _ => {}
                        }
                    }
                    Ok(())
                })
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)))
                .map_err(|e| format!("recording a location written to the DFS: {e}"));
                if recorded.is_ok() {
                    let mut state = self.lock();
                    state.memory_index = index.to_vec();
                    if let Some((bytes, files)) = state.left_on_disk.take() {
                        if !std::mem::replace(&mut state.discarded, true) {
                            self.disk.release(bytes, files);
                        }
                    }
                }
                recorded
            }
            Err(e) => Err(format!("completing the upload to the DFS: {e}")),
        };
        self.finish_commit(recorded)
    }

    /// A committed location whose data is the DFS object `dfs` (`data_len` bytes, `stats`) and
    /// whose whole index is `index`. It holds nothing on `disk`.
    pub fn on_dfs(
        name: String,
        disk: Arc<Disk>,
        files: LocationFiles,
        dfs: super::dfs::DfsObject,
        data_len: u64,
        stats: pb::BatchStats,
        index: Bytes,
    ) -> Partition {
        let mut partition = Partition::new(name, disk, files);
        let _ = partition.dfs.set(dfs);
        {
            let state = partition.state.get_mut().unwrap_or_else(|e| e.into_inner());
            state.status = Status::Committed;
            state.flushed_len = data_len;
            state.index_len = index.len() as u64;
            state.stats = stats;
            state.committed_index = Some(index);
            // Nothing on this worker's disk to give back when it is deleted.
            state.discarded = true;
        }
        partition
    }

    /// Where pushes to this primary are forwarded before they are acked.
    pub fn replica(&self) -> Option<String> {
        self.replica
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn set_replica(&self, replica: Option<String>) {
        *self.replica.lock().unwrap_or_else(|e| e.into_inner()) = replica;
    }

    /// A location found on disk after a restart: committed (from its commit record) or flushed and
    /// never committed (from its verified index).
    pub fn recovered(
        name: String,
        disk: Arc<Disk>,
        files: LocationFiles,
        extent: Extent,
        committed: bool,
    ) -> Partition {
        let partition = Partition::new(name, disk, files);
        {
            let mut state = partition.lock();
            state.status = if committed {
                Status::Committed
            } else {
                Status::Recovered
            };
            state.created = extent.created;
            state.flushed_len = extent.data_len;
            state.index_len = extent.index_len;
            state.stats = extent.stats;
            state.index_file = extent.index.is_none() && extent.created;
            if let Some(index) = extent.index {
                if committed {
                    state.committed_index = Some(index);
                } else {
                    state.memory_index = index.to_vec();
                }
            }
        }
        let index_file = partition.lock().index_file;
        let files = u64::from(extent.created) + u64::from(index_file);
        let index_bytes = if index_file { extent.index_len } else { 0 };
        partition.disk.hold(extent.data_len + index_bytes, files);
        partition
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock would be a bug; keep serving rather than poison-panic.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends a slice of whole batches, each checked against its CRC and its partition. The
    /// slice (and the lease it carries) stays in the buffer until it is flushed. Returns whether
    /// the caller must list the partition for aged flushes (it is not listed yet). Malformed
    /// batches reject the whole slice. A location holding anything may not grow past
    /// `size_cap`: the push is refused and the writer moves the partition to a new epoch
    /// elsewhere.
    pub fn append(
        self: &Arc<Self>,
        partition: u32,
        slice: Bytes,
        flush_threshold: u64,
        size_cap: u64,
    ) -> WorkerResult<bool> {
        let mut state = self.lock();
        match &state.status {
            Status::Open => {}
            Status::Sealing | Status::Committed => {
                return Err(WorkerError::Committed(self.name.clone()))
            }
            Status::Recovered => {
                return Err(WorkerError::NotFound(format!(
                    "{} was recovered after a restart and takes no more pushes",
                    self.name
                )))
            }
            Status::Failed(reason) => {
                return Err(WorkerError::Disk {
                    location: self.name.clone(),
                    reason: reason.clone(),
                })
            }
        }
        let base = state.flushed_len + state.pending_len;
        if base > 0 && base + slice.len() as u64 > size_cap {
            return Err(WorkerError::PartitionFull {
                location: self.name.clone(),
                cap: size_cap,
            });
        }
        let mut index = Vec::new();
        let mut stats = pb::BatchStats::default();
        let mut position = 0u64;
        for item in BatchIter::new(slice.clone()) {
            let invalid =
                |e: String| WorkerError::InvalidRequest(format!("push to {}: {e}", self.name));
            let (head, bytes) = item.map_err(|e| invalid(e.to_string()))?;
            batch::verify(&head, &bytes).map_err(|e| invalid(e.to_string()))?;
            if head.partition != partition {
                return Err(invalid(format!(
                    "a batch of partition {} (map {}, batch {})",
                    head.partition, head.map_id, head.batch_id
                )));
            }
            IndexEntry::for_batch(&head, base + position).encode_into(&mut index);
            stats.add(head.total_len() as u64, head.crc);
            position += head.total_len() as u64;
        }
        state.pending_index.extend_from_slice(&index);
        state.stats.merge(&stats);
        state.pending_len += slice.len() as u64;
        state.pending.push(slice);
        state.pending_since.get_or_insert_with(Instant::now);
        let list = !std::mem::replace(&mut state.listed, true);
        if state.pending_len >= flush_threshold {
            self.flush_locked(&mut state);
        }
        Ok(list)
    }

    /// Writes out whatever is pending (memory pressure), or only what has waited longer than
    /// `older_than` when given. Returns whether it stays listed (something is still pending).
    pub fn flush_pending(self: &Arc<Self>, older_than: Option<Duration>) -> bool {
        let mut state = self.lock();
        let due = match (older_than, state.pending_since) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(age), Some(since)) => since.elapsed() >= age,
        };
        if due && matches!(state.status, Status::Open | Status::Sealing) {
            self.flush_locked(&mut state);
        }
        state.listed = state.pending_since.is_some();
        state.listed
    }

    fn fail_locked(&self, state: &mut State, reason: String) {
        if !matches!(state.status, Status::Failed(_)) {
            tracing::warn!(location = %self.name, reason = %reason, "partition failed");
        }
        self.drop_pending_locked(state, reason);
    }

    fn drop_pending_locked(&self, state: &mut State, reason: String) {
        if !matches!(state.status, Status::Failed(_)) {
            state.status = Status::Failed(reason);
        }
        // Replaced, not cleared: a failed or deleted location may stay referenced for a while
        // (a flush in flight), and should not keep its buffers' capacity meanwhile.
        state.pending = Vec::new();
        state.pending_index = Vec::new();
        state.memory_index = Vec::new();
        state.committed_index = None;
        state.pending_len = 0;
        state.pending_since = None;
    }

    /// Hands everything pending to the disk's flusher. Offsets are fixed here, so the file
    /// layout does not depend on the order writes complete in. The index entries stay in memory
    /// while they fit in [`SMALL_INDEX`]; the flush that takes them past it creates the index
    /// file with all of them.
    fn flush_locked(self: &Arc<Self>, state: &mut State) {
        if let Some(spill) = &self.spill {
            // Grown past its size: the rest goes to the DFS, after what is on the disk. Once
            // no flush is in flight, so the file holds everything flushed so far.
            if self.dfs_writer.get().is_none()
                && state.inflight == 0
                && state.flushed_len + state.pending_len > spill.above
                && spill.dfs.takes_writers()
            {
                self.move_to_dfs_locked(state, spill);
            }
        }
        if let Some(writer) = self.dfs_writer.get() {
            // Straight to the DFS: the index stays in memory, nothing is held on the disk.
            state.created = true;
            state.pending_since = None;
            let len = std::mem::take(&mut state.pending_len);
            let entries = std::mem::take(&mut state.pending_index);
            state.index_len += entries.len() as u64;
            state.memory_index.extend_from_slice(&entries);
            state.flushed_len += len;
            let (done, outcome) = oneshot::channel();
            let bufs = std::mem::take(&mut state.pending);
            state.inflight += 1;
            if writer
                .send(super::dfs::WriteJob::Write(bufs, done))
                .is_err()
            {
                state.inflight -= 1;
                self.fail_locked(state, "the DFS writer stopped".into());
                return;
            }
            self.clone().when_flushed(outcome, "the DFS writer stopped");
            return;
        }
        let create = !state.created;
        state.created = true;
        let len = std::mem::take(&mut state.pending_len);
        state.pending_since = None;
        let entries = std::mem::take(&mut state.pending_index);
        let index_len = entries.len() as u64;
        let index = if state.index_file {
            Some(IndexWrite {
                create: false,
                offset: state.index_len,
                bytes: Bytes::from(entries),
            })
        } else if state.memory_index.len() + entries.len() <= SMALL_INDEX {
            state.memory_index.extend_from_slice(&entries);
            None
        } else {
            state.index_file = true;
            let mut all = std::mem::take(&mut state.memory_index);
            all.extend_from_slice(&entries);
            Some(IndexWrite {
                create: true,
                offset: 0,
                bytes: Bytes::from(all),
            })
        };
        let (index_bytes, index_created) = index
            .as_ref()
            .map_or((0, false), |write| (write.bytes.len() as u64, write.create));
        let (done, outcome) = oneshot::channel();
        let job = FlushJob {
            files: self.files.clone(),
            create,
            data_offset: state.flushed_len,
            bufs: std::mem::take(&mut state.pending),
            index,
            done,
        };
        state.flushed_len += len;
        state.index_len += index_len;
        self.disk.hold(
            len + index_bytes,
            u64::from(create) + u64::from(index_created),
        );
        state.inflight += 1;
        if !self.disk.flush(job) {
            state.inflight -= 1;
            self.fail_locked(state, "the disk's flusher has stopped".into());
            return;
        }
        self.clone()
            .when_flushed(outcome, "the disk's flusher has stopped");
    }

    /// Starts writing this local location to the DFS: a new writer task first uploads what the
    /// location's files hold, then takes every later flush.
    fn move_to_dfs_locked(self: &Arc<Self>, state: &mut State, spill: &Spill) {
        let writer = super::dfs::spawn_writer(spill.dfs.clone(), &spill.shuffle, spill.id);
        let index_bytes = if state.index_file { state.index_len } else { 0 };
        if state.created && state.flushed_len > 0 {
            let (done, outcome) = oneshot::channel();
            let prefix = super::dfs::WriteJob::Prefix {
                data: self.files.data.clone(),
                data_len: state.flushed_len,
                index: state.index_file.then(|| self.files.index.clone()),
                index_len: index_bytes,
                done,
            };
            if writer.send(prefix).is_err() {
                return;
            }
            state.inflight += 1;
            self.clone().when_flushed(outcome, "the DFS writer stopped");
        }
        if !state.created {
            // Nothing on the disk: nothing to give back when it is deleted.
            state.discarded = true;
        } else if !state.discarded {
            state.left_on_disk = Some((
                state.flushed_len + index_bytes,
                1 + u64::from(state.index_file),
            ));
        }
        // The index now goes with the DFS writer: the file's entries first, then these.
        state.index_file = false;
        let _ = self.dfs.set(super::dfs::DfsObject::new(
            &spill.dfs,
            &spill.shuffle,
            spill.id,
        ));
        let _ = self.dfs_writer.set(writer);
        tracing::info!(location = %self.name, bytes = state.flushed_len + state.pending_len, dfs = spill.dfs.url(), "location outgrew dfs_location_size: the rest of it goes to the DFS");
    }

    /// Ends a flush when its `outcome` comes (`gone`: why, when its writer dropped it).
    fn when_flushed(
        self: Arc<Self>,
        outcome: oneshot::Receiver<std::io::Result<()>>,
        gone: &'static str,
    ) {
        tokio::spawn(async move {
            let result = outcome
                .await
                .unwrap_or_else(|_| Err(std::io::Error::other(gone)));
            self.flush_done(result);
        });
    }

    fn flush_done(&self, result: std::io::Result<()>) {
        let mut state = self.lock();
        state.inflight -= 1;
        if let Err(e) = result {
            self.fail_locked(&mut state, format!("flush failed: {e}"));
        }
        drop(state);
        self.flushed.notify_waiters();
    }

    /// Starts a commit: flushes, waits for every write, and reports what the location holds,
    /// for its commit record. [`Partition::finish_commit`] ends it once the record is written.
    /// Idempotent.
    pub async fn seal(self: &Arc<Self>) -> Result<Sealed, String> {
        {
            let mut state = self.lock();
            match &state.status {
                Status::Committed => return Ok(Sealed::Committed(state.stats)),
                Status::Failed(reason) => return Err(reason.clone()),
                Status::Open | Status::Recovered => {
                    state.status = Status::Sealing;
                    if state.pending_len > 0 {
                        self.flush_locked(&mut state);
                    }
                }
                Status::Sealing => {}
            }
        }
        loop {
            let notified = self.flushed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.lock().inflight == 0 {
                break;
            }
            notified.await;
        }
        let state = self.lock();
        match &state.status {
            Status::Failed(reason) => Err(reason.clone()),
            Status::Committed => Ok(Sealed::Committed(state.stats)),
            _ => Ok(Sealed::Ready(
                CommitMarker {
                    data_len: state.flushed_len,
                    index_len: state.index_len,
                    stats: state.stats,
                    created: state.created,
                },
                state.index_file,
            )),
        }
    }

    /// Ends a commit [`Partition::seal`] found ready: `recorded` is whether its commit record
    /// (and, when asked, the files' fsync) made it to disk.
    pub fn finish_commit(&self, recorded: Result<(), String>) -> Result<pb::BatchStats, String> {
        let mut state = self.lock();
        match &state.status {
            Status::Failed(reason) => return Err(reason.clone()),
            // Two commits of one location (a retried request beside the first) both seal it and
            // both record it; the first to end already keeps the index for reads.
            Status::Committed => return Ok(state.stats),
            Status::Open | Status::Recovered | Status::Sealing => {}
        }
        if let Err(reason) = recorded {
            self.fail_locked(&mut state, reason.clone());
            return Err(reason);
        }
        state.status = Status::Committed;
        if !state.index_file {
            state.committed_index = Some(Bytes::from(std::mem::take(&mut state.memory_index)));
        }
        Ok(state.stats)
    }

    pub fn files(&self) -> &LocationFiles {
        &self.files
    }

    pub fn disk(&self) -> &Arc<Disk> {
        &self.disk
    }

    /// The files to read, once committed.
    pub fn committed_files(&self) -> WorkerResult<CommittedFiles> {
        let state = self.lock();
        match &state.status {
            Status::Committed => Ok(CommittedFiles {
                files: (state.created && self.dfs.get().is_none()).then(|| self.files.clone()),
                data_len: state.flushed_len,
                index_len: state.index_len,
                index: state.committed_index.clone(),
                dfs: self.dfs.get().cloned(),
            }),
            Status::Failed(reason) => Err(WorkerError::Disk {
                location: self.name.clone(),
                reason: reason.clone(),
            }),
            Status::Open | Status::Recovered | Status::Sealing => Err(WorkerError::InvalidRequest(
                format!("{} is not committed yet", self.name),
            )),
        }
    }

    /// Drops buffered data (the shuffle is being deleted). Flushes in flight finish into files
    /// that are about to be unlinked.
    pub fn discard(&self) {
        let mut state = self.lock();
        if !std::mem::replace(&mut state.discarded, true) {
            let (bytes, files) = state.left_on_disk.take().unwrap_or_else(|| {
                let index_bytes = if state.index_file { state.index_len } else { 0 };
                (
                    state.flushed_len + index_bytes,
                    u64::from(state.created) + u64::from(state.index_file),
                )
            });
            self.disk.release(bytes, files);
        }
        self.drop_pending_locked(&mut state, "deleted".into());
    }
}
