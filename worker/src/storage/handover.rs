//! Locations handed over by a draining peer. The peer sends a committed location's data file in
//! pieces, in order; this worker writes them to a `.handover` file beside where the location's
//! data file goes, and on the last piece renames it, checks its batches add up to the totals
//! the peer committed, records the commit in the shuffle's journal and serves the location as
//! if it had committed it itself (a restart recovers it like any committed location).

use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::Bytes;
use sluice_protocol::{pb, ShuffleKey};

use super::disk::Disk;
use super::layout::{self, CommitMarker, LocationFiles, LocationId};
use super::partition::Partition;
use super::{recovery, Store};
use crate::error::{WorkerError, WorkerResult};

/// The file the pieces go to until the last one arrives.
fn partial(files: &LocationFiles) -> std::path::PathBuf {
    files.data.with_extension("handover")
}

impl Store {
    /// Takes location `id` of `shuffle`, which a draining peer uploaded to the DFS: checks its
    /// objects against `data_len` and `stats` (the index must list `stats.batches` batches inside
    /// the data), then serves it from there.
    pub async fn hand_in_dfs(
        &self,
        shuffle: &ShuffleKey,
        id: LocationId,
        data_len: u64,
        stats: pb::BatchStats,
    ) -> WorkerResult<()> {
        let name = format!("{shuffle}/{}", id.stem());
        let dfs = self.dfs().cloned().ok_or_else(|| {
            WorkerError::InvalidRequest(format!(
                "{name} is on a DFS, and this worker has none (dfs)"
            ))
        })?;
        let index_len = stats.batches * super::index::ENTRY_LEN as u64;
        let failed = |reason: String| WorkerError::Disk {
            location: name.clone(),
            reason,
        };
        let (object, index) = dfs
            .locate(shuffle, id, data_len, index_len)
            .await
            .map_err(|e| failed(format!("on the DFS: {e}")))?;
        super::dfs::check_index(&index, data_len, stats.batches)
            .map_err(|e| failed(format!("on the DFS: {e}")))?;
        let disk = self.pick_disk();
        let files = LocationFiles::new(&disk.path, shuffle, id);
        // Kept locally too, so a restart serves it again: its index, then its totals.
        let marker = CommitMarker {
            data_len,
            index_len,
            stats,
            created: true,
        };
        let (local, local_index) = (files.clone(), index.clone());
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            if let Some(dir) = local.data.parent() {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::write(local.dfs_index(), &local_index)?;
            std::fs::write(local.dfs_marker(), marker.marker_text())
        })
        .await
        .map_err(|e| failed(e.to_string()))?
        .map_err(|e| failed(format!("recording it locally: {e}")))?;
        let partition = Partition::on_dfs(name, disk, files, object, data_len, stats, index);
        self.take_over(shuffle, id, partition);
        Ok(())
    }

    /// Serves `partition` as location `id` of `shuffle` from now on, in place of any before it.
    fn take_over(&self, shuffle: &ShuffleKey, id: LocationId, partition: Partition) {
        let replaced = self
            .lock()
            .entry(shuffle.clone())
            .or_default()
            .insert(id, Arc::new(partition));
        if let Some(old) = replaced {
            old.discard();
        }
    }

    /// Writes one piece of location `id` of `shuffle`, handed over by a draining peer: `body`
    /// holds the data file's bytes from `offset`. Pieces must come in order, the first at
    /// offset 0 (which starts the location afresh). `last` carries the totals the peer
    /// committed: the location is then checked against them, recorded as committed and served.
    pub async fn hand_in(
        &self,
        shuffle: &ShuffleKey,
        id: LocationId,
        offset: u64,
        body: Bytes,
        last: Option<pb::BatchStats>,
    ) -> WorkerResult<()> {
        let key = (shuffle.clone(), id);
        let disk = {
            let mut incoming = self.incoming.lock().unwrap_or_else(|e| e.into_inner());
            if offset == 0 {
                let disk = self.pick_disk();
                incoming.insert(key.clone(), disk.clone());
                disk
            } else {
                incoming.get(&key).cloned().ok_or_else(|| {
                    WorkerError::InvalidRequest(format!(
                        "a piece at offset {offset} of {shuffle} {} that was never started",
                        id.stem()
                    ))
                })?
            }
        };
        let files = LocationFiles::new(&disk.path, shuffle, id);
        let name = format!("{shuffle}/{}", id.stem());
        let fsync = self.fsync_on_commit;
        let written = {
            let files = files.clone();
            tokio::task::spawn_blocking(move || write_piece(&files, offset, &body, last, fsync))
                .await
                .map_err(|e| WorkerError::io("hand-over task", std::io::Error::other(e)))?
        };
        if last.is_some() || written.is_err() {
            self.incoming
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&key);
        }
        let Some(extent) = written.map_err(|e| WorkerError::Disk {
            location: name.clone(),
            reason: format!("taking a handed-over location: {e}"),
        })?
        else {
            return Ok(());
        };
        self.take_over(
            shuffle,
            id,
            Partition::recovered(name, disk, files, extent, true),
        );
        Ok(())
    }
}

/// Writes a piece; on the last one finishes the location. Blocking.
fn write_piece(
    files: &LocationFiles,
    offset: u64,
    body: &[u8],
    last: Option<pb::BatchStats>,
    fsync: bool,
) -> std::io::Result<Option<super::partition::Extent>> {
    let path = partial(files);
    let file = if offset == 0 {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::File::create(&path)?
    } else {
        std::fs::OpenOptions::new().write(true).open(&path)?
    };
    let len = file.metadata()?.len();
    if len != offset {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("a piece at offset {offset}, but {len} bytes arrived before it"),
        ));
    }
    file.write_all_at(body, offset)?;
    let Some(stats) = last else {
        return Ok(None);
    };
    let data_len = offset + body.len() as u64;
    let marker = CommitMarker {
        data_len,
        index_len: stats.batches * super::index::ENTRY_LEN as u64,
        stats,
        created: data_len > 0,
    };
    if fsync {
        file.sync_all()?;
    }
    drop(file);
    // A stale index of the same location would be taken for this one's.
    match std::fs::remove_file(&files.index) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    if marker.created {
        std::fs::rename(&path, &files.data)?;
    } else {
        std::fs::remove_file(&path)?;
    }
    let extent = match recovery::committed(files, Some(marker)) {
        Ok(extent) => extent,
        Err(e) => {
            let _ = std::fs::remove_file(&files.data);
            return Err(e);
        }
    };
    let dir = files
        .data
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default();
    let id = files
        .data
        .file_stem()
        .and_then(|s| s.to_str())
        .and_then(LocationId::parse_stem)
        .ok_or_else(|| std::io::Error::other("not a location's file name"))?;
    layout::record_commits(&dir, &[(id, marker)], fsync)?;
    Ok(Some(extent))
}

/// The disk a hand-over in progress writes to, by shuffle and location.
pub(super) type Incoming = std::collections::HashMap<(ShuffleKey, LocationId), Arc<Disk>>;
