//! Storage: the registry of partition locations, their disks and their files.
//!
//! - [`engine`]: disk write engines (io_uring, positional writes, a fault-injecting test engine).
//! - [`disk`]: a data directory with its flusher and health figures.
//! - [`partition`]: one location's memory buffer, data file and batch index.
//! - [`layout`]: location ids, file names, the commit journal, and the scan of a data directory.
//! - [`index`]: the batch index format and chunking.
//! - [`recovery`]: what a location flushed before a restart verifiably holds.
//! - [`dfs`]: the DFS tier (S3, a shared file system) through OpenDAL: committed locations
//!   uploaded there and served from there.
//! - [`handover`]: locations a draining peer hands over, written and recorded as committed.
//! - [`read`]: opening streams over committed locations and sending their chunks.

pub mod dfs;
pub mod disk;
pub mod engine;
pub mod handover;
pub mod index;
pub mod layout;
pub mod partition;
pub mod read;
pub mod recovery;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use sluice_protocol::{pb, ShuffleKey};

use self::disk::Disk;
use self::layout::{CommitMarker, LocationFiles, LocationId};
use self::partition::{Extent, Partition, Sealed};
use crate::error::{WorkerError, WorkerResult};
use crate::memory::MemoryBudget;

type Shuffles = HashMap<ShuffleKey, HashMap<LocationId, Arc<Partition>>>;

/// The locations of one commit call on one disk that are sealed and ready to record: their
/// index in the call, their records, and whether they have an index file.
type SealedOnDisk = (Arc<Disk>, Vec<(usize, CommitMarker, bool)>);

#[derive(Debug)]
pub struct Store {
    disks: Vec<Arc<Disk>>,
    memory: Arc<MemoryBudget>,
    shuffles: Mutex<Shuffles>,
    /// Partitions whose buffer held something when last looked at: what aged flushes visit,
    /// so a tick costs what is buffered, not what is reserved.
    buffered: Mutex<Vec<Arc<Partition>>>,
    next_disk: AtomicUsize,
    fsync_on_commit: bool,
    /// Locations a draining peer is handing over, and the disk each goes to.
    incoming: Mutex<handover::Incoming>,
    /// The DFS (`dfs`), when configured.
    dfs: std::sync::OnceLock<Arc<dfs::Dfs>>,
    /// Free space each disk keeps (`disk_reserve`); with a DFS, new locations of a worker whose
    /// every disk is below it are written to the DFS.
    disk_reserve: std::sync::atomic::AtomicU64,
    /// Size past which a local location moves to the DFS (`dfs_location_size`; 0: never).
    dfs_location_size: std::sync::atomic::AtomicU64,
}

impl Store {
    pub fn new(disks: Vec<Arc<Disk>>, memory: Arc<MemoryBudget>, fsync_on_commit: bool) -> Store {
        Store {
            disks,
            memory,
            shuffles: Mutex::default(),
            buffered: Mutex::default(),
            next_disk: AtomicUsize::new(0),
            fsync_on_commit,
            incoming: Mutex::default(),
            dfs: std::sync::OnceLock::new(),
            disk_reserve: std::sync::atomic::AtomicU64::new(0),
            dfs_location_size: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Registers every location found on the disks after a restart, so it is served again:
    /// committed ones from their commit records, and ones flushed but never committed from what
    /// their files verifiably hold (the master commits them with the rest of their shuffle; they
    /// take no more pushes). Returns `(committed, flushed)` counts. Blocking: runs before serving.
    pub fn recover(&self) -> (usize, usize) {
        let mut counts = (0, 0);
        let mut shuffles = self.lock();
        for disk in &self.disks {
            for found in layout::scan(&disk.path) {
                if let layout::Commit::OnDfs(marker) = found.commit {
                    match self.recover_on_dfs(disk, &found, marker) {
                        Ok(partition) => {
                            shuffles
                                .entry(found.shuffle)
                                .or_default()
                                .insert(found.id, Arc::new(partition));
                            counts.0 += 1;
                        }
                        Err(e) => {
                            tracing::warn!(location = %found.files.dfs_marker().display(), error = %e, "location on the DFS not recovered")
                        }
                    }
                    continue;
                }
                let committed = found.commit != layout::Commit::No;
                let extent = match found.commit {
                    layout::Commit::No => recovery::flushed(&found.files),
                    layout::Commit::Recorded(marker) => {
                        recovery::committed(&found.files, Some(marker))
                    }
                    layout::Commit::MarkerFile => recovery::committed(&found.files, None),
                    // Recovered above.
                    layout::Commit::OnDfs(_) => continue,
                };
                let extent: Extent = match extent {
                    Ok(extent) => extent,
                    Err(e) => {
                        tracing::warn!(data = %found.files.data.display(), error = %e, "location not recovered");
                        continue;
                    }
                };
                let name = format!("{}/{}", found.shuffle, found.id.stem());
                let partition =
                    Partition::recovered(name, disk.clone(), found.files, extent, committed);
                shuffles
                    .entry(found.shuffle)
                    .or_default()
                    .insert(found.id, Arc::new(partition));
                if committed {
                    counts.0 += 1;
                } else {
                    counts.1 += 1;
                }
            }
        }
        counts
    }

    /// A location kept on the DFS, from its local marker and index (no DFS call). Blocking.
    fn recover_on_dfs(
        &self,
        disk: &Arc<Disk>,
        found: &layout::Found,
        marker: CommitMarker,
    ) -> Result<Partition, String> {
        let dfs = self
            .dfs()
            .ok_or("it is on a DFS and this worker has none configured (dfs)")?;
        let index = std::fs::read(found.files.dfs_index()).map_err(|e| e.to_string())?;
        dfs::check_index(&index, marker.data_len, marker.stats.batches)?;
        let object = dfs::DfsObject::new(dfs, &found.shuffle, found.id);
        Ok(Partition::on_dfs(
            format!("{}/{}", found.shuffle, found.id.stem()),
            disk.clone(),
            found.files.clone(),
            object,
            marker.data_len,
            marker.stats,
            bytes::Bytes::from(index),
        ))
    }

    fn lock(&self) -> MutexGuard<'_, Shuffles> {
        self.shuffles.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Uses `dfs` as the DFS tier (set once, at start).
    pub fn set_dfs(&self, dfs: Arc<dfs::Dfs>) {
        let _ = self.dfs.set(dfs);
    }

    /// The DFS tier, when configured.
    pub fn dfs(&self) -> Option<&Arc<dfs::Dfs>> {
        self.dfs.get()
    }

    /// Sets `disk_reserve`.
    pub fn set_disk_reserve(&self, bytes: u64) {
        self.disk_reserve.store(bytes, Ordering::Relaxed);
    }

    /// Sets `dfs_location_size`.
    pub fn set_dfs_location_size(&self, bytes: u64) {
        self.dfs_location_size.store(bytes, Ordering::Relaxed);
    }

    /// The DFS, when new locations go there: it is configured and up, and every disk whose
    /// space is known has less free than `disk_reserve` (or is unhealthy).
    fn dfs_for_new_locations(&self) -> Option<&Arc<dfs::Dfs>> {
        let dfs = self.dfs().filter(|dfs| dfs.takes_writers())?;
        let reserve = self.disk_reserve.load(Ordering::Relaxed);
        let full = |disk: &Arc<Disk>| {
            let usage = disk.usage();
            !disk.is_healthy() || (usage.space_answered && usage.free_bytes < reserve)
        };
        (reserve > 0 && self.disks.iter().all(full)).then_some(dfs)
    }

    pub fn disks(&self) -> &[Arc<Disk>] {
        &self.disks
    }

    pub fn memory(&self) -> &Arc<MemoryBudget> {
        &self.memory
    }

    pub fn active_partitions(&self) -> u64 {
        self.lock().values().map(|m| m.len() as u64).sum()
    }

    /// `(shuffles, partition locations)` held, under one lock.
    pub fn counts(&self) -> (u64, u64) {
        let shuffles = self.lock();
        let partitions = shuffles.values().map(|m| m.len() as u64).sum();
        (shuffles.len() as u64, partitions)
    }

    /// The shuffles this worker holds locations of (reserved, buffered, flushed or committed),
    /// at most `limit` of them, in no particular order. From memory only: no disk I/O.
    pub fn shuffle_keys(&self, limit: usize) -> Vec<ShuffleKey> {
        self.lock().keys().take(limit).cloned().collect()
    }

    /// The next healthy disk, round robin (all disks when none is healthy, so the error surfaces
    /// on write rather than here).
    fn pick_disk(&self) -> Arc<Disk> {
        let n = self.disks.len();
        let start = self.next_disk.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| &self.disks[(start + i) % n])
            .find(|d| d.is_healthy())
            .unwrap_or(&self.disks[start % n])
            .clone()
    }

    /// Creates the locations (idempotent: an existing location keeps its data and takes the
    /// new replica). Touches no disk: the first flush creates the files.
    pub fn reserve(&self, shuffle: &ShuffleKey, specs: &[pb::LocationSpec]) -> WorkerResult<()> {
        let ids = specs
            .iter()
            .map(LocationId::of_spec)
            .collect::<WorkerResult<Vec<_>>>()?;
        let mut shuffles = self.lock();
        let locations = shuffles.entry(shuffle.clone()).or_default();
        for (spec, id) in specs.iter().zip(ids) {
            let replica = spec.replica.as_ref().map(|r| r.push_addr());
            if let Some(existing) = locations.get(&id) {
                existing.set_replica(replica);
                continue;
            }
            let disk = self.pick_disk();
            let files = LocationFiles::new(&disk.path, shuffle, id);
            let name = format!("{shuffle}/{}", id.stem());
            let partition = match self.dfs_for_new_locations() {
                // The disks are full: written straight to the DFS.
                Some(dfs) => Partition::writing_to_dfs(
                    name,
                    disk,
                    files,
                    dfs::DfsObject::new(dfs, shuffle, id),
                    dfs::spawn_writer(dfs.clone(), shuffle, id),
                ),
                None => {
                    let local = Partition::new(name, disk, files);
                    match (self.dfs(), self.dfs_location_size.load(Ordering::Relaxed)) {
                        (Some(dfs), above) if above > 0 => local.with_spill(partition::Spill {
                            dfs: dfs.clone(),
                            shuffle: shuffle.clone(),
                            id,
                            above,
                        }),
                        _ => local,
                    }
                }
            };
            partition.set_replica(replica);
            locations.insert(id, Arc::new(partition));
        }
        Ok(())
    }

    /// The locations of `shuffle` this worker holds.
    pub fn locations(&self, shuffle: &ShuffleKey) -> Vec<(LocationId, Arc<Partition>)> {
        self.lock()
            .get(shuffle)
            .map(|l| l.iter().map(|(id, p)| (*id, p.clone())).collect())
            .unwrap_or_default()
    }

    /// Looks up several locations of one shuffle under one lock.
    pub fn get_many(
        &self,
        shuffle: &ShuffleKey,
        ids: impl Iterator<Item = LocationId>,
    ) -> Vec<Option<Arc<Partition>>> {
        let shuffles = self.lock();
        let locations = shuffles.get(shuffle);
        ids.map(|id| locations.and_then(|l| l.get(&id)).cloned())
            .collect()
    }

    pub fn get(&self, shuffle: &ShuffleKey, id: LocationId) -> WorkerResult<Arc<Partition>> {
        self.get_many(shuffle, std::iter::once(id))
            .pop()
            .flatten()
            .ok_or_else(|| {
                WorkerError::NotFound(format!(
                    "{shuffle} partition {} epoch {} on this worker",
                    id.partition, id.epoch
                ))
            })
    }

    /// Lists a partition whose buffer just went from empty to holding something.
    pub fn note_buffered(&self, partition: &Arc<Partition>) {
        self.buffered
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(partition.clone());
    }

    /// Flushes every buffered partition (memory pressure), or only what has waited longer than
    /// `older_than`; partitions still holding something stay listed.
    pub fn flush_pending(&self, older_than: Option<Duration>) {
        let listed = std::mem::take(&mut *self.buffered.lock().unwrap_or_else(|e| e.into_inner()));
        let still: Vec<Arc<Partition>> = listed
            .into_iter()
            .filter(|partition| partition.flush_pending(older_than))
            .collect();
        self.buffered
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(still);
    }

    /// Commits the given locations: seals them in parallel (their last flushes), then records
    /// the sealed ones in their shuffle's commit journal, one append per disk (after an fsync of
    /// their files when `fsync_on_commit`).
    pub async fn commit(
        &self,
        shuffle: &ShuffleKey,
        specs: &[pb::LocationSpec],
    ) -> Vec<pb::CommittedSpec> {
        let partitions: Vec<Option<Arc<Partition>>> = {
            let shuffles = self.lock();
            let locations = shuffles.get(shuffle);
            specs
                .iter()
                .map(|spec| {
                    let id = LocationId::of_spec(spec).ok()?;
                    locations?.get(&id).cloned()
                })
                .collect()
        };
        let mut tasks = tokio::task::JoinSet::new();
        for (i, partition) in partitions.iter().enumerate() {
            let partition = partition.clone();
            tasks.spawn(async move {
                let result = match partition {
                    Some(partition) => partition.seal().await,
                    None => {
                        Err("location is not on this worker (never reserved, or deleted)".into())
                    }
                };
                (i, result)
            });
        }
        let mut out: Vec<pb::CommittedSpec> = specs
            .iter()
            .map(|spec| pb::CommittedSpec {
                location: Some(pb::LocationSpec {
                    replica: None,
                    ..spec.clone()
                }),
                ..Default::default()
            })
            .collect();
        // The sealed locations to record, by disk.
        let mut ready: Vec<SealedOnDisk> = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok((i, Ok(Sealed::Committed(stats)))) => {
                    out[i].stats = Some(stats);
                    out[i].ok = true;
                }
                Ok((i, Ok(Sealed::Ready(marker, _))))
                    if partitions[i].as_ref().is_some_and(|p| p.writes_to_dfs()) =>
                {
                    if let Some(partition) = &partitions[i] {
                        match partition.finish_on_dfs(marker).await {
                            Ok(stats) => {
                                out[i].stats = Some(stats);
                                out[i].ok = true;
                            }
                            Err(reason) => out[i].error = reason,
                        }
                    }
                }
                Ok((i, Ok(Sealed::Ready(marker, index_file)))) => {
                    if let Some(partition) = &partitions[i] {
                        let disk = partition.disk();
                        let sealed = (i, marker, index_file);
                        match ready.iter_mut().find(|(d, _)| Arc::ptr_eq(d, disk)) {
                            Some((_, all)) => all.push(sealed),
                            None => ready.push((disk.clone(), vec![sealed])),
                        }
                    }
                }
                Ok((i, Err(reason))) => out[i].error = reason,
                Err(e) => tracing::error!(error = %e, "commit task failed"),
            }
        }
        for (disk, sealed) in ready {
            let ids: Vec<(LocationId, CommitMarker)> = sealed
                .iter()
                .filter_map(|&(i, marker, _)| Some((LocationId::of_spec(&specs[i]).ok()?, marker)))
                .collect();
            // The files to sync: each data file, and each index file there is.
            let to_sync: Vec<std::path::PathBuf> = sealed
                .iter()
                .filter(|(_, marker, _)| self.fsync_on_commit && marker.created)
                .filter_map(|&(i, _, index_file)| {
                    let files = partitions[i].as_ref()?.files();
                    Some([
                        Some(files.data.clone()),
                        index_file.then(|| files.index.clone()),
                    ])
                })
                .flatten()
                .flatten()
                .collect();
            let dir = layout::shuffle_dir(&disk.path, shuffle);
            let fsync = self.fsync_on_commit;
            let recorded = tokio::task::spawn_blocking(move || {
                for path in &to_sync {
                    std::fs::File::open(path)?.sync_all()?;
                }
                // Files were flushed into `dir`: if it is gone, the shuffle was deleted meanwhile,
                // and recording would only bring back an empty directory.
                if !dir.exists() && ids.iter().any(|(_, marker)| marker.created) {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "the shuffle's directory is gone (deleted)",
                    ));
                }
                layout::record_commits(&dir, &ids, fsync)
            })
            .await;
            let recorded = match recorded {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(format!("recording the commit failed: {e}")),
                Err(e) => Err(format!("commit task failed: {e}")),
            };
            for (i, _, _) in sealed {
                let Some(partition) = &partitions[i] else {
                    continue;
                };
                match partition.finish_commit(recorded.clone()) {
                    Ok(stats) => {
                        out[i].stats = Some(stats);
                        out[i].ok = true;
                    }
                    Err(reason) => out[i].error = reason,
                }
            }
        }
        for spec in out.iter_mut().filter(|s| !s.ok && s.error.is_empty()) {
            spec.error = "commit task failed".into();
        }
        out
    }

    /// Deletes one shuffle (`Some`) or a whole application (`None`): buffers and files.
    pub async fn destroy(&self, app_id: &str, shuffle_id: Option<u32>) {
        let removed: Vec<(ShuffleKey, HashMap<LocationId, Arc<Partition>>)> = {
            let mut shuffles = self.lock();
            let keys: Vec<ShuffleKey> = shuffles
                .keys()
                .filter(|k| &*k.app_id == app_id && shuffle_id.is_none_or(|s| s == k.shuffle_id))
                .cloned()
                .collect();
            let removed = keys
                .into_iter()
                .filter_map(|k| shuffles.remove_entry(&k))
                .collect();
            // The map keeps the capacity of its busiest moment otherwise.
            if shuffles.capacity() > 4 * shuffles.len().max(16) {
                shuffles.shrink_to_fit();
            }
            removed
        };
        for partition in removed.iter().flat_map(|(_, m)| m.values()) {
            partition.discard();
        }
        drop(removed);
        let dirs: Vec<std::path::PathBuf> = self
            .disks
            .iter()
            .map(|disk| layout::deletion_dir(&disk.path, app_id, shuffle_id))
            .collect();
        let removed_dirs = tokio::task::spawn_blocking(move || {
            for dir in dirs {
                match std::fs::remove_dir_all(&dir) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        tracing::warn!(dir = %dir.display(), error = %e, "cannot delete shuffle files")
                    }
                }
            }
        })
        .await;
        if let Err(e) = removed_dirs {
            tracing::warn!(error = %e, "shuffle deletion task failed");
        }
        if let Some(dfs) = self.dfs() {
            if let Err(e) = dfs.remove(app_id, shuffle_id).await {
                tracing::warn!(dfs = dfs.url(), app = app_id, shuffle = ?shuffle_id, error = %e, "cannot delete shuffle objects on the DFS");
            }
        }
        tracing::info!(app = app_id, shuffle = ?shuffle_id, "deleted");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::engine::{open_engine, EngineChoice};

    #[tokio::test]
    async fn shuffle_keys_lists_each_held_shuffle_once_up_to_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let engine = open_engine(EngineChoice::Sync, "shuffle-keys").unwrap();
        let (disk, _queue) = Disk::new(dir.path().to_path_buf(), engine);
        let store = Store::new(
            vec![Arc::new(disk)],
            Arc::new(MemoryBudget::new(1 << 20)),
            false,
        );
        assert!(store.shuffle_keys(10).is_empty());
        let spec = |partition| pb::LocationSpec {
            partition,
            ..Default::default()
        };
        let (a, b) = (ShuffleKey::new("app-1", 0), ShuffleKey::new("app-1", 1));
        store.reserve(&a, &[spec(0), spec(1)]).unwrap();
        store.reserve(&b, &[spec(0)]).unwrap();
        let mut keys = store.shuffle_keys(10);
        keys.sort_by_key(|k| k.shuffle_id);
        assert_eq!(keys, vec![a.clone(), b]);
        assert_eq!(store.shuffle_keys(1).len(), 1);
        store.destroy("app-1", Some(1)).await;
        assert_eq!(store.shuffle_keys(10), vec![a]);
    }

    /// A store on one disk in `dir`, with the disk's flusher running.
    fn store_on(dir: &std::path::Path, fsync_on_commit: bool) -> (Arc<Disk>, Store) {
        let engine = open_engine(EngineChoice::Sync, "store-test").unwrap();
        let (disk, queue) = Disk::new(dir.to_path_buf(), engine);
        let disk = Arc::new(disk);
        tokio::spawn(disk::run_flusher(Arc::downgrade(&disk), queue));
        let memory = Arc::new(MemoryBudget::new(1 << 20));
        let store = Store::new(vec![disk.clone()], memory, fsync_on_commit);
        (disk, store)
    }

    /// Batch `batch_id` of map 0 for `partition`, holding `payload` uncompressed.
    fn stored_batch(partition: u32, batch_id: u32, payload: &[u8]) -> bytes::Bytes {
        let tag = sluice_protocol::batch::BatchTag {
            partition,
            map_id: 0,
            attempt: 0,
            batch_id,
        };
        sluice_protocol::batch::encode(tag, payload, sluice_protocol::batch::Codec::None)
            .unwrap()
            .1
    }

    #[tokio::test]
    async fn a_disk_counts_the_bytes_and_files_its_locations_hold_until_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let (disk, store) = store_on(dir.path(), false);
        let key = ShuffleKey::new("app-u", 0);
        let spec = pb::LocationSpec {
            partition: 3,
            ..Default::default()
        };
        store.reserve(&key, std::slice::from_ref(&spec)).unwrap();
        assert_eq!(disk.usage().files, 0, "a reservation touches no disk");
        let batch = stored_batch(3, 0, &[7; 500]);
        let id = LocationId::of_spec(&spec).unwrap();
        let partition = store.get(&key, id).unwrap();
        partition.append(3, batch.clone(), 1, u64::MAX).unwrap();
        let committed = store.commit(&key, &[spec]).await;
        assert!(committed[0].ok, "{:?}", committed[0].error);
        let files = partition.committed_files().unwrap();
        let usage = disk.usage();
        assert_eq!(usage.used_bytes, files.data_len, "the index is in memory");
        assert_eq!(files.data_len, batch.len() as u64);
        assert_eq!(usage.files, 1, "the data file");
        store.destroy("app-u", None).await;
        let usage = disk.usage();
        assert_eq!((usage.used_bytes, usage.files), (0, 0));
    }

    #[tokio::test]
    async fn two_commits_at_once_both_succeed_and_keep_the_small_index() {
        let dir = tempfile::tempdir().unwrap();
        let (_disk, store) = store_on(dir.path(), false);
        let key = ShuffleKey::new("app-twice", 0);
        let spec = pb::LocationSpec::default();
        store.reserve(&key, std::slice::from_ref(&spec)).unwrap();
        let location = store
            .get(&key, LocationId::of_spec(&spec).unwrap())
            .unwrap();
        let batch = stored_batch(0, 0, &[5; 300]);
        location.append(0, batch.clone(), 1, u64::MAX).unwrap();
        // Both commits seal the location while its last flush is in flight, so both find it
        // ready and both record it.
        let specs = std::slice::from_ref(&spec);
        let (first, second) = tokio::join!(store.commit(&key, specs), store.commit(&key, specs));
        assert!(first[0].ok && second[0].ok, "{first:?} {second:?}");
        let header = pb::OpenStreamHeader {
            location: Some(pb::LocationRef::default()),
            ..Default::default()
        };
        let opened = read::open_stream(location, header, 1 << 20).await.unwrap();
        assert_eq!(opened.chunks.len(), 1, "{opened:?}");
        assert_eq!(opened.chunks[0].ranges[0].length, batch.len() as u64);
    }

    #[tokio::test]
    async fn two_commits_at_once_of_a_location_on_the_dfs_both_succeed() {
        let dir = tempfile::tempdir().unwrap();
        let (disk, _store) = store_on(dir.path(), false);
        let objects = tempfile::tempdir().unwrap();
        let dfs = Arc::new(
            dfs::Dfs::open(&format!("fs://{}", objects.path().display()), "", "").unwrap(),
        );
        dfs.set_memory(Arc::new(MemoryBudget::new(1 << 20)));
        let key = ShuffleKey::new("app-twice-dfs", 0);
        let id = LocationId::new(0, 0, 0).unwrap();
        let location = Arc::new(Partition::writing_to_dfs(
            "0-0-p".into(),
            disk,
            LocationFiles::new(dir.path(), &key, id),
            dfs::DfsObject::new(&dfs, &key, id),
            dfs::spawn_writer(dfs.clone(), &key, id),
        ));
        let batch = stored_batch(0, 0, &[6; 300]);
        location.append(0, batch.clone(), 1, u64::MAX).unwrap();
        // The writer closes once: the second commit must take the first's answer, not fail
        // the location because its writer is gone.
        let commit = || async {
            match location.seal().await? {
                Sealed::Committed(stats) => Ok(stats),
                Sealed::Ready(marker, _) => location.finish_on_dfs(marker).await,
            }
        };
        let (first, second) = tokio::join!(commit(), commit());
        assert_eq!(first, second);
        assert_eq!(first.unwrap().bytes, batch.len() as u64);
        let files = location.committed_files().unwrap();
        assert_eq!(files.index.map(|i| i.len()), Some(index::ENTRY_LEN));
    }

    #[tokio::test]
    async fn commits_go_to_one_journal_and_small_indexes_are_served_from_memory() {
        let dir = tempfile::tempdir().unwrap();
        let (_disk, store) = store_on(dir.path(), true);
        let key = ShuffleKey::new("app-j", 2);
        let specs: Vec<pb::LocationSpec> = (0..3)
            .map(|partition| pb::LocationSpec {
                partition,
                ..Default::default()
            })
            .collect();
        store.reserve(&key, &specs).unwrap();
        // Partition 0 gets one batch, 1 gets twenty (too many entries to keep), 2 none.
        for (partition, batches) in [(0u32, 1u32), (1, 20)] {
            let location = store.get(&key, LocationId::new(partition, 0, 0).unwrap());
            for batch_id in 0..batches {
                let batch = stored_batch(partition, batch_id, &[9; 100]);
                location
                    .as_ref()
                    .unwrap()
                    .append(partition, batch, 1, u64::MAX)
                    .unwrap();
            }
        }
        let committed = store.commit(&key, &specs).await;
        assert!(committed.iter().all(|c| c.ok), "{committed:?}");
        let shuffle_dir = layout::shuffle_dir(dir.path(), &key);
        let journal = std::fs::read_to_string(layout::journal(&shuffle_dir)).unwrap();
        assert_eq!(
            journal.lines().filter(|l| !l.is_empty()).count(),
            3,
            "{journal}"
        );
        let names: Vec<String> = std::fs::read_dir(&shuffle_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(
            !names.iter().any(|n| n.ends_with(".committed")),
            "{names:?}"
        );
        // Committing again answers the same without a second record.
        assert!(store.commit(&key, &specs).await.iter().all(|c| c.ok));
        let again = std::fs::read_to_string(layout::journal(&shuffle_dir)).unwrap();
        assert_eq!(again, journal);

        let open = |store: &Store, partition| {
            let location = store
                .get(&key, LocationId::new(partition, 0, 0).unwrap())
                .unwrap();
            let header = pb::OpenStreamHeader {
                location: Some(pb::LocationRef {
                    partition,
                    ..Default::default()
                }),
                ..Default::default()
            };
            read::open_stream(location, header, 1 << 20)
        };
        let files = |partition| {
            LocationFiles::new(dir.path(), &key, LocationId::new(partition, 0, 0).unwrap())
        };
        assert!(files(0).data.exists());
        assert!(
            !files(0).index.exists(),
            "one batch: the index is kept in memory"
        );
        assert!(
            files(1).index.exists(),
            "twenty batches: the index has its file"
        );
        let small = open(&store, 0).await.unwrap();
        assert_eq!(small.chunks.len(), 1);
        let large = open(&store, 1).await.unwrap();
        assert_eq!(large.chunks[0].ranges[0].length, 20 * (batch_len(100)));

        // A restarted worker finds all three committed, from the journal, and rebuilds the
        // index of partition 0 from its data file; partition 1 lost its index file and is
        // rebuilt the same way, checked against its record.
        std::fs::remove_file(files(1).index).unwrap();
        let restart = || store_on(dir.path(), false).1;
        let restarted = restart();
        assert_eq!(restarted.recover(), (3, 0));
        assert_eq!(open(&restarted, 0).await.unwrap(), small);
        assert_eq!(open(&restarted, 1).await.unwrap(), large);
        assert!(open(&restarted, 2).await.unwrap().chunks.is_empty());

        // A data file that no longer adds up to its record is not served again.
        let mut data = std::fs::read(files(0).data).unwrap();
        let last = data.len() - 1;
        data[last] ^= 1;
        std::fs::write(files(0).data, data).unwrap();
        assert_eq!(restart().recover(), (2, 0));
    }

    fn batch_len(payload: usize) -> u64 {
        let tag = sluice_protocol::batch::BatchTag {
            partition: 0,
            map_id: 0,
            attempt: 0,
            batch_id: 0,
        };
        sluice_protocol::batch::encode(tag, &vec![9; payload], sluice_protocol::batch::Codec::None)
            .unwrap()
            .1
            .len() as u64
    }
}
