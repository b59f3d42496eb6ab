//! One partition location on this worker: a memory buffer, an append-only data file and its
//! batch index.
//!
//! Pushed slices (whole batches, zero-copy `Bytes` from the frame) queue in `pending`. Once
//! `flush_buffer_size` is pending, or under memory pressure, or at commit, the pending slices go
//! to the disk's write engine as one sequential write at the file's tail, with their index
//! entries as a second write. Offsets are assigned when a batch is appended, so the file layout
//! does not depend on the order writes complete in. Memory is released when the write completes.

use std::fs::File;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use sluice_protocol::batch::BatchIter;
use sluice_protocol::pb;
use tokio::sync::Notify;

use super::disk::{Disk, FlushJob};
use super::index::IndexEntry;
use crate::error::{WorkerError, WorkerResult};
use crate::memory::MemoryBudget;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Status {
    Open,
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
    /// Whether the data and index files exist (created by the first flush).
    created: bool,
    /// Data-file offset where `pending` will be written.
    flushed_len: u64,
    index_len: u64,
    stats: pb::BatchStats,
    inflight: usize,
}

/// What a committed location holds, recorded in `<stem>.committed` beside its files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitMarker {
    pub data_len: u64,
    pub index_len: u64,
    pub stats: pb::BatchStats,
    pub created: bool,
}

/// The marker file of the data file at `data_path`.
pub fn marker_path(data_path: &std::path::Path) -> PathBuf {
    data_path.with_extension("committed")
}

impl CommitMarker {
    const MAGIC: &'static str = "sluice-committed-v1";

    fn write(&self, path: &std::path::Path, fsync: bool) -> std::io::Result<()> {
        let text = format!(
            "{} {} {} {} {} {} {}\n",
            Self::MAGIC,
            self.data_len,
            self.index_len,
            self.stats.bytes,
            self.stats.batches,
            self.stats.checksum,
            u8::from(self.created)
        );
        let temporary = path.with_extension("committed.tmp");
        std::fs::write(&temporary, text)?;
        if fsync {
            File::open(&temporary)?.sync_all()?;
        }
        std::fs::rename(&temporary, path)
    }

    /// Parses a marker; `None` for anything that is not a whole, well-formed one.
    pub fn parse(text: &str) -> Option<CommitMarker> {
        let mut fields = text.trim_end().split(' ');
        if fields.next()? != Self::MAGIC {
            return None;
        }
        let mut number = || fields.next()?.parse::<u64>().ok();
        let marker = CommitMarker {
            data_len: number()?,
            index_len: number()?,
            stats: pb::BatchStats {
                bytes: number()?,
                batches: number()?,
                checksum: number()?,
            },
            created: match number()? {
                0 => false,
                1 => true,
                _ => return None,
            },
        };
        // Files are created by the first flush, so a location without them holds nothing.
        let consistent = marker.created || (marker.data_len == 0 && marker.index_len == 0);
        (consistent && fields.next().is_none()).then_some(marker)
    }
}

/// The committed files of a location, for reading. Files are opened per request, so a worker
/// holding many partitions holds no descriptors for them.
#[derive(Debug, Clone)]
pub struct CommittedFiles {
    /// `(data, index)`; `None` when nothing was ever pushed to the location.
    pub paths: Option<(PathBuf, PathBuf)>,
    pub data_len: u64,
    pub index_len: u64,
}

#[derive(Debug)]
pub struct Partition {
    name: String,
    pub disk: Arc<Disk>,
    data_path: PathBuf,
    index_path: PathBuf,
    memory: Arc<MemoryBudget>,
    state: Mutex<State>,
    flushed: Notify,
    /// On a primary with a replica: the replica's push address. Set by reservations.
    replica: Mutex<Option<String>>,
}

impl Partition {
    pub fn new(
        name: String,
        disk: Arc<Disk>,
        data_path: PathBuf,
        index_path: PathBuf,
        memory: Arc<MemoryBudget>,
    ) -> Partition {
        Partition {
            name,
            disk,
            data_path,
            index_path,
            memory,
            state: Mutex::new(State {
                status: Status::Open,
                pending: Vec::new(),
                pending_len: 0,
                pending_index: Vec::new(),
                created: false,
                flushed_len: 0,
                index_len: 0,
                stats: pb::BatchStats::default(),
                inflight: 0,
            }),
            flushed: Notify::new(),
            replica: Mutex::new(None),
        }
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

    /// A location committed before this worker restarted, from its marker.
    pub fn recovered(
        name: String,
        disk: Arc<Disk>,
        data_path: PathBuf,
        index_path: PathBuf,
        memory: Arc<MemoryBudget>,
        marker: CommitMarker,
    ) -> Partition {
        let partition = Partition::new(name, disk, data_path, index_path, memory);
        {
            let mut state = partition.lock();
            state.status = Status::Committed;
            state.created = marker.created;
            state.flushed_len = marker.data_len;
            state.index_len = marker.index_len;
            state.stats = marker.stats;
        }
        partition
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock would be a bug; keep serving rather than poison-panic.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends a slice of whole batches. On success the partition owns `slice.len()` bytes of
    /// the memory budget until they are flushed. Malformed batches reject the whole slice.
    /// A location holding anything may not grow past `size_cap`: the push is refused and the
    /// writer moves the partition to a new epoch elsewhere.
    pub fn append(
        self: &Arc<Self>,
        slice: Bytes,
        flush_threshold: u64,
        size_cap: u64,
    ) -> WorkerResult<()> {
        let mut state = self.lock();
        match &state.status {
            Status::Open => {}
            Status::Sealing | Status::Committed => {
                return Err(WorkerError::Committed(self.name.clone()))
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
            let (head, _) = item
                .map_err(|e| WorkerError::InvalidRequest(format!("push to {}: {e}", self.name)))?;
            IndexEntry::for_batch(&head, base + position).encode_into(&mut index);
            stats.add(head.total_len() as u64, head.crc);
            position += head.total_len() as u64;
        }
        state.pending_index.extend_from_slice(&index);
        state.stats.merge(&stats);
        state.pending_len += slice.len() as u64;
        state.pending.push(slice);
        if state.pending_len >= flush_threshold {
            self.flush_locked(&mut state);
        }
        Ok(())
    }

    /// Writes out whatever is pending (memory pressure).
    pub fn flush_pending(self: &Arc<Self>) {
        let mut state = self.lock();
        if state.pending_len > 0 && matches!(state.status, Status::Open | Status::Sealing) {
            self.flush_locked(&mut state);
        }
    }

    /// Opens the data and index files for one flush; the first flush creates them. The write
    /// engine drops them (closing the descriptors) when the writes complete.
    pub(crate) fn open_files(&self, create: bool) -> std::io::Result<(Arc<File>, Arc<File>)> {
        let open = |path: &PathBuf| {
            std::fs::OpenOptions::new()
                .write(true)
                .create(create)
                .truncate(create)
                .open(path)
        };
        Ok((
            Arc::new(open(&self.data_path)?),
            Arc::new(open(&self.index_path)?),
        ))
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
        let dropped = state.pending_len;
        state.pending.clear();
        state.pending_index.clear();
        state.pending_len = 0;
        self.memory.release(dropped);
    }

    /// Hands everything pending to the disk's flusher. Offsets are fixed here, so the file
    /// layout does not depend on the order writes complete in.
    fn flush_locked(self: &Arc<Self>, state: &mut State) {
        let create = !state.created;
        state.created = true;
        let len = std::mem::take(&mut state.pending_len);
        let index = Bytes::from(std::mem::take(&mut state.pending_index));
        let index_len = index.len() as u64;
        let job = FlushJob {
            partition: self.clone(),
            create,
            data_offset: state.flushed_len,
            bufs: std::mem::take(&mut state.pending),
            index_offset: state.index_len,
            index,
            len,
        };
        state.flushed_len += len;
        state.index_len += index_len;
        state.inflight += 1;
        if self.disk.flush(job).is_err() {
            state.inflight -= 1;
            self.memory.release(len);
            self.fail_locked(state, "the disk's flusher has stopped".into());
        }
    }

    /// Called by the flusher when a flush of `len` bytes ended.
    pub fn flush_done(&self, len: u64, result: std::io::Result<()>, took: std::time::Duration) {
        self.disk.record_flush(took);
        self.memory.release(len);
        let mut state = self.lock();
        state.inflight -= 1;
        if let Err(e) = result {
            if super::disk::is_disk_fault(&e) {
                self.disk.mark_unhealthy();
            }
            self.fail_locked(&mut state, format!("flush failed: {e}"));
        }
        drop(state);
        self.flushed.notify_waiters();
    }

    /// Flushes, waits for every write, optionally fsyncs, and reports what the location holds.
    /// Idempotent.
    pub async fn commit(self: &Arc<Self>, fsync: bool) -> Result<pb::BatchStats, String> {
        {
            let mut state = self.lock();
            match &state.status {
                Status::Committed => return Ok(state.stats),
                Status::Failed(reason) => return Err(reason.clone()),
                Status::Open => {
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
        let marker = {
            let state = self.lock();
            match &state.status {
                Status::Failed(reason) => return Err(reason.clone()),
                Status::Committed => return Ok(state.stats),
                _ => CommitMarker {
                    data_len: state.flushed_len,
                    index_len: state.index_len,
                    stats: state.stats,
                    created: state.created,
                },
            }
        };
        // Optionally fsync the files, then record the commit beside them so a restarted worker
        // serves them again.
        let paths = (self.data_path.clone(), self.index_path.clone());
        let finished = tokio::task::spawn_blocking(move || {
            if fsync && marker.created {
                File::open(&paths.0)?.sync_all()?;
                File::open(&paths.1)?.sync_all()?;
            }
            marker.write(&marker_path(&paths.0), fsync)
        })
        .await;
        let error = match finished {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(format!("finishing the files failed: {e}")),
            Err(e) => Some(format!("commit task failed: {e}")),
        };
        if let Some(reason) = error {
            let mut state = self.lock();
            self.fail_locked(&mut state, reason.clone());
            return Err(reason);
        }
        let mut state = self.lock();
        if let Status::Failed(reason) = &state.status {
            return Err(reason.clone());
        }
        state.status = Status::Committed;
        Ok(state.stats)
    }

    /// The files to read, once committed.
    pub fn committed_files(&self) -> WorkerResult<CommittedFiles> {
        let state = self.lock();
        match &state.status {
            Status::Committed => Ok(CommittedFiles {
                paths: state
                    .created
                    .then(|| (self.data_path.clone(), self.index_path.clone())),
                data_len: state.flushed_len,
                index_len: state.index_len,
            }),
            Status::Failed(reason) => Err(WorkerError::Disk {
                location: self.name.clone(),
                reason: reason.clone(),
            }),
            Status::Open | Status::Sealing => Err(WorkerError::InvalidRequest(format!(
                "{} is not committed yet",
                self.name
            ))),
        }
    }

    /// Drops buffered data (the shuffle is being deleted). Flushes in flight finish into files
    /// that are about to be unlinked.
    pub fn discard(&self) {
        let mut state = self.lock();
        self.drop_pending_locked(&mut state, "deleted".into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_markers_round_trip_and_reject_anything_else() {
        let dir = tempfile::tempdir().unwrap();
        let marker = CommitMarker {
            data_len: 123_456,
            index_len: 240,
            stats: pb::BatchStats {
                bytes: 123_456,
                batches: 10,
                checksum: u64::MAX - 3,
            },
            created: true,
        };
        let path = marker_path(&dir.path().join("3-1-p.data"));
        marker.write(&path, true).unwrap();
        assert_eq!(path.file_name().unwrap(), "3-1-p.committed");
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(CommitMarker::parse(&text), Some(marker));
        for bad in [
            "",
            "sluice-committed-v1 1 2 3 4",
            "sluice-committed-v1 1 2 3 4 5 2",
            "other 1 2 3 4 5 1",
            &text[..text.len() / 2],
            &format!("{text} 9"),
            // Found by the `commit_marker` fuzz target: no files, yet bytes to serve.
            "sluice-committed-v1 88888 03 0000000000000000008 03 000 00000000000000000",
        ] {
            assert_eq!(CommitMarker::parse(bad), None, "{bad:?}");
        }
    }
}
