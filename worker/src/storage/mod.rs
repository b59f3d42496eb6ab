//! Storage: the registry of partition locations, their disks and their files.
//!
//! - [`engine`]: disk write engines (io_uring, positional writes, a fault-injecting test engine).
//! - [`disk`]: a data directory with its engine (its flusher) and health figures.
//! - [`partition`]: one location's memory buffer, data file and batch index.
//! - [`index`]: the batch index format and chunking.
//!
//! Files live at `<data dir>/<app>/<shuffle>/<partition>-<epoch>-<p|r>.{data,index}`.

pub mod disk;
pub mod engine;
pub mod index;
pub mod partition;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use sluice_protocol::{pb, ShuffleKey};

use self::disk::Disk;
use self::partition::Partition;
use crate::error::{WorkerError, WorkerResult};
use crate::memory::MemoryBudget;

/// A location on this worker: partition, epoch and role (`pb::Role` as i32).
pub type LocationId = (u32, u32, i32);

type Shuffles = HashMap<ShuffleKey, HashMap<LocationId, Arc<Partition>>>;

#[derive(Debug)]
pub struct Store {
    disks: Vec<Arc<Disk>>,
    memory: Arc<MemoryBudget>,
    shuffles: Mutex<Shuffles>,
    next_disk: AtomicUsize,
    fsync_on_commit: bool,
}

fn role_suffix(role: i32) -> &'static str {
    if role == pb::Role::Replica as i32 {
        "r"
    } else {
        "p"
    }
}

impl Store {
    pub fn new(disks: Vec<Arc<Disk>>, memory: Arc<MemoryBudget>, fsync_on_commit: bool) -> Store {
        Store {
            disks,
            memory,
            shuffles: Mutex::default(),
            next_disk: AtomicUsize::new(0),
            fsync_on_commit,
        }
    }

    /// Registers every location committed before a restart (found by its marker) so it is
    /// served again. Returns how many were found. Files without a marker were never committed
    /// and are left for the shuffle's deletion.
    pub fn recover(&self) -> usize {
        let mut found = 0;
        let mut shuffles = self.lock();
        for disk in &self.disks {
            for (app, shuffle_id, marker_path) in committed_markers(&disk.path) {
                let Some(stem) = marker_path.file_stem().and_then(|s| s.to_str()) else {
                    continue;
                };
                let parsed = parse_stem(stem).zip(
                    std::fs::read_to_string(&marker_path)
                        .ok()
                        .and_then(|text| partition::CommitMarker::parse(&text)),
                );
                let Some(((partition, epoch, role), marker)) = parsed else {
                    tracing::warn!(marker = %marker_path.display(), "unreadable commit marker, skipped");
                    continue;
                };
                let data_path = marker_path.with_extension("data");
                let index_path = marker_path.with_extension("index");
                let intact = !marker.created
                    || (file_len(&data_path) >= marker.data_len
                        && file_len(&index_path) >= marker.index_len);
                if !intact {
                    tracing::warn!(data = %data_path.display(), "committed files are shorter than recorded, not served");
                    continue;
                }
                let key = ShuffleKey::new(app.as_str(), shuffle_id);
                let name = format!("{key}/{stem}");
                disk.active.fetch_add(1, Ordering::Relaxed);
                shuffles.entry(key).or_default().insert(
                    (partition, epoch, role),
                    Arc::new(Partition::recovered(
                        name,
                        disk.clone(),
                        data_path,
                        index_path,
                        self.memory.clone(),
                        marker,
                    )),
                );
                found += 1;
            }
        }
        found
    }

    fn lock(&self) -> MutexGuard<'_, Shuffles> {
        self.shuffles.lock().unwrap_or_else(|e| e.into_inner())
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

    /// Creates the locations (idempotent: an existing location is kept as is).
    pub fn reserve(&self, shuffle: &ShuffleKey, specs: &[pb::LocationSpec]) -> WorkerResult<()> {
        let mut created_dirs: Vec<PathBuf> = Vec::new();
        let mut shuffles = self.lock();
        let locations = shuffles.entry(shuffle.clone()).or_default();
        for spec in specs {
            let id = (spec.partition, spec.epoch, spec.role);
            let replica = spec.replica.as_ref().map(|r| r.push_addr());
            if let Some(existing) = locations.get(&id) {
                // Reserved again (placement retried): keep the data, take the new replica.
                existing.set_replica(replica);
                continue;
            }
            let disk = self.pick_disk();
            let dir = disk
                .path
                .join(&*shuffle.app_id)
                .join(shuffle.shuffle_id.to_string());
            if !created_dirs.contains(&dir) {
                std::fs::create_dir_all(&dir)
                    .map_err(|e| WorkerError::io(format!("creating {}", dir.display()), e))?;
                created_dirs.push(dir.clone());
            }
            let stem = format!(
                "{}-{}-{}",
                spec.partition,
                spec.epoch,
                role_suffix(spec.role)
            );
            let name = format!("{shuffle}/{stem}");
            disk.active.fetch_add(1, Ordering::Relaxed);
            let partition = Partition::new(
                name,
                disk,
                dir.join(format!("{stem}.data")),
                dir.join(format!("{stem}.index")),
                self.memory.clone(),
            );
            partition.set_replica(replica);
            locations.insert(id, Arc::new(partition));
        }
        Ok(())
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
                    id.0, id.1
                ))
            })
    }

    /// Flushes every partition's buffer (memory pressure).
    pub fn flush_all_pending(&self) {
        let partitions: Vec<Arc<Partition>> = self
            .lock()
            .values()
            .flat_map(|m| m.values().cloned())
            .collect();
        for partition in partitions {
            partition.flush_pending();
        }
    }

    /// Commits the given locations, in parallel.
    pub async fn commit(
        &self,
        shuffle: &ShuffleKey,
        specs: &[pb::LocationSpec],
    ) -> Vec<pb::CommittedSpec> {
        let partitions = self.get_many(
            shuffle,
            specs.iter().map(|s| (s.partition, s.epoch, s.role)),
        );
        let mut tasks = tokio::task::JoinSet::new();
        for (i, partition) in partitions.into_iter().enumerate() {
            let fsync = self.fsync_on_commit;
            tasks.spawn(async move {
                let result = match partition {
                    Some(partition) => partition.commit(fsync).await,
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
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok((i, Ok(stats))) => {
                    out[i].stats = Some(stats);
                    out[i].ok = true;
                }
                Ok((i, Err(reason))) => out[i].error = reason,
                Err(e) => tracing::error!(error = %e, "commit task failed"),
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
            keys.into_iter()
                .filter_map(|k| shuffles.remove_entry(&k))
                .collect()
        };
        for partition in removed.iter().flat_map(|(_, m)| m.values()) {
            partition.discard();
            partition.disk.active.fetch_sub(1, Ordering::Relaxed);
        }
        let dirs: Vec<PathBuf> = self
            .disks
            .iter()
            .map(|disk| match shuffle_id {
                Some(id) => disk.path.join(app_id).join(id.to_string()),
                None => disk.path.join(app_id),
            })
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
        tracing::info!(app = app_id, shuffle = ?shuffle_id, "deleted");
    }
}

fn file_len(path: &std::path::Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// `<partition>-<epoch>-<p|r>` as a location id.
fn parse_stem(stem: &str) -> Option<LocationId> {
    let mut parts = stem.split('-');
    let partition = parts.next()?.parse().ok()?;
    let epoch = parts.next()?.parse().ok()?;
    let role = match parts.next()? {
        "p" => pb::Role::Primary as i32,
        "r" => pb::Role::Replica as i32,
        _ => return None,
    };
    parts.next().is_none().then_some((partition, epoch, role))
}

/// Every `<app>/<shuffle>/<stem>.committed` under a data directory.
fn committed_markers(dir: &std::path::Path) -> Vec<(String, u32, PathBuf)> {
    let entries = |dir: &std::path::Path| -> Vec<PathBuf> {
        std::fs::read_dir(dir)
            .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default()
    };
    let mut out = Vec::new();
    for app_dir in entries(dir).into_iter().filter(|p| p.is_dir()) {
        let Some(app) = app_dir
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_string)
        else {
            continue;
        };
        if sluice_protocol::ids::validate_app_id(&app).is_err() {
            continue;
        }
        for shuffle_dir in entries(&app_dir).into_iter().filter(|p| p.is_dir()) {
            let Some(shuffle_id) = shuffle_dir
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            for file in entries(&shuffle_dir) {
                if file.extension().is_some_and(|e| e == "committed") {
                    out.push((app.clone(), shuffle_id, file));
                }
            }
        }
    }
    out
}

/// A chunk to send: the committed data file and the validated ranges to send from it.
#[derive(Debug)]
pub struct ChunkSource {
    /// `None` when the location holds no data (then `ranges` is empty).
    pub file: Option<std::fs::File>,
    pub ranges: Vec<pb::Range>,
    pub len: u64,
}

/// Checks that every range of `chunk` lies inside the committed data file and that the chunk
/// fits in one frame.
pub fn chunk_source(
    partition: &Partition,
    chunk: pb::Chunk,
    max_len: u64,
) -> WorkerResult<ChunkSource> {
    let committed = partition.committed_files()?;
    let total = chunk
        .ranges
        .iter()
        .try_fold(0u64, |sum, r| sum.checked_add(r.length))
        .unwrap_or(u64::MAX);
    if total > max_len {
        return Err(WorkerError::InvalidRequest(format!(
            "chunk of {total} bytes exceeds the limit of {max_len}"
        )));
    }
    for range in &chunk.ranges {
        if range.offset.saturating_add(range.length) > committed.data_len {
            return Err(WorkerError::InvalidRequest(format!(
                "range {}+{} is outside {} ({} bytes)",
                range.offset,
                range.length,
                partition.name(),
                committed.data_len
            )));
        }
    }
    let file = match (&committed.paths, total) {
        (Some((data, _)), 1..) => {
            Some(std::fs::File::open(data).map_err(|e| WorkerError::Disk {
                location: partition.name().to_string(),
                reason: format!("cannot open {}: {e}", data.display()),
            })?)
        }
        _ => None,
    };
    Ok(ChunkSource {
        file,
        ranges: chunk.ranges,
        len: total,
    })
}

/// Reads a committed location's index and cuts it into chunks.
pub async fn open_stream(
    partition: &Partition,
    start_map: u32,
    end_map: Option<u32>,
    chunk_size: u64,
) -> WorkerResult<pb::StreamOpenedHeader> {
    let committed = partition.committed_files()?;
    let Some((_, index)) = committed.paths else {
        return Ok(pb::StreamOpenedHeader::default());
    };
    let name = partition.name().to_string();
    let (index_len, data_len) = (committed.index_len, committed.data_len);
    let entries = tokio::task::spawn_blocking(move || {
        use std::os::unix::fs::FileExt;
        let mut bytes = vec![0u8; index_len as usize];
        std::fs::File::open(&index)
            .and_then(|file| file.read_exact_at(&mut bytes, 0))
            .map_err(|e| WorkerError::io(format!("reading the index of {name}"), e))?;
        index::decode(&bytes, data_len).map_err(|reason| WorkerError::Disk {
            location: name,
            reason,
        })
    })
    .await
    .map_err(|e| WorkerError::io("index task", std::io::Error::other(e)))??;
    Ok(pb::StreamOpenedHeader {
        chunks: index::chunks(&entries, start_map, end_map, chunk_size),
        file_length: data_len,
    })
}
