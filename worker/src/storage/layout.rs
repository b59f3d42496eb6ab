//! Where a location's files live, and the one place their names are built and parsed.
//!
//! ```text
//! <data dir>/<app>/<shuffle>/<partition>-<epoch>-<p|r>.data        batches, appended
//! <data dir>/<app>/<shuffle>/<partition>-<epoch>-<p|r>.index       one entry per batch
//! <data dir>/<app>/<shuffle>/<partition>-<epoch>-<p|r>.committed   the commit marker
//! ```
//!
//! A location is identified by a [`LocationId`]; [`LocationFiles`] holds its paths and opens
//! them; [`CommitMarker`] is what a committed location holds, written last so that a restarted
//! worker knows which files were whole; [`scan`] finds every location a data directory holds.

use std::fs::File;
use std::path::{Path, PathBuf};

use sluice_protocol::{pb, ShuffleKey};

use crate::error::{WorkerError, WorkerResult};

/// One location on a worker: a partition's copy at one epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LocationId {
    pub partition: u32,
    pub epoch: u32,
    pub role: pb::Role,
}

impl LocationId {
    /// From wire fields; an unknown role is a bad request.
    pub fn new(partition: u32, epoch: u32, role: i32) -> WorkerResult<LocationId> {
        let role = pb::Role::try_from(role)
            .map_err(|_| WorkerError::InvalidRequest(format!("unknown role {role}")))?;
        Ok(LocationId {
            partition,
            epoch,
            role,
        })
    }

    pub fn of_spec(spec: &pb::LocationSpec) -> WorkerResult<LocationId> {
        LocationId::new(spec.partition, spec.epoch, spec.role)
    }

    pub fn of_ref(location: &pb::LocationRef) -> WorkerResult<LocationId> {
        LocationId::new(location.partition, location.epoch, location.role)
    }

    /// `<partition>-<epoch>-<p|r>`, the stem of the location's file names.
    pub fn stem(&self) -> String {
        let role = match self.role {
            pb::Role::Primary => "p",
            pb::Role::Replica => "r",
        };
        format!("{}-{}-{role}", self.partition, self.epoch)
    }

    /// The inverse of [`LocationId::stem`]; `None` for any other name.
    pub fn parse_stem(stem: &str) -> Option<LocationId> {
        let mut parts = stem.split('-');
        let partition = parts.next()?.parse().ok()?;
        let epoch = parts.next()?.parse().ok()?;
        let role = match parts.next()? {
            "p" => pb::Role::Primary,
            "r" => pb::Role::Replica,
            _ => return None,
        };
        parts.next().is_none().then_some(LocationId {
            partition,
            epoch,
            role,
        })
    }
}

/// The directory holding one shuffle's files on one disk.
pub fn shuffle_dir(root: &Path, shuffle: &ShuffleKey) -> PathBuf {
    root.join(&*shuffle.app_id)
        .join(shuffle.shuffle_id.to_string())
}

/// The directory holding one application's (`None`) or one shuffle's files on one disk.
pub fn deletion_dir(root: &Path, app_id: &str, shuffle_id: Option<u32>) -> PathBuf {
    match shuffle_id {
        Some(id) => root.join(app_id).join(id.to_string()),
        None => root.join(app_id),
    }
}

/// The files of one location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocationFiles {
    pub data: PathBuf,
    pub index: PathBuf,
}

impl LocationFiles {
    pub fn new(root: &Path, shuffle: &ShuffleKey, id: LocationId) -> LocationFiles {
        LocationFiles::in_dir(&shuffle_dir(root, shuffle), id)
    }

    fn in_dir(dir: &Path, id: LocationId) -> LocationFiles {
        let stem = id.stem();
        LocationFiles {
            data: dir.join(format!("{stem}.data")),
            index: dir.join(format!("{stem}.index")),
        }
    }

    pub fn marker(&self) -> PathBuf {
        self.data.with_extension("committed")
    }

    /// Opens data and index for writing; `create` makes (truncates) them and their directory.
    /// Blocking: call from the engine's thread or `spawn_blocking`.
    pub fn open_for_write(&self, create: bool) -> std::io::Result<(File, File)> {
        if create {
            if let Some(dir) = self.data.parent() {
                std::fs::create_dir_all(dir)?;
            }
        }
        let open = |path: &Path| {
            std::fs::OpenOptions::new()
                .write(true)
                .create(create)
                .truncate(create)
                .open(path)
        };
        Ok((open(&self.data)?, open(&self.index)?))
    }
}

/// What a committed location holds, recorded in `<stem>.committed` beside its files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitMarker {
    pub data_len: u64,
    pub index_len: u64,
    pub stats: pb::BatchStats,
    pub created: bool,
}

impl CommitMarker {
    const MAGIC: &'static str = "sluice-committed-v1";

    /// Writes the marker atomically (a temporary file renamed over it). Blocking.
    pub fn write(&self, path: &Path, fsync: bool) -> std::io::Result<()> {
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

/// A location found on disk by [`scan`].
#[derive(Debug, Clone)]
pub struct Found {
    pub shuffle: ShuffleKey,
    pub id: LocationId,
    pub files: LocationFiles,
    /// Whether a commit marker exists (else: flushed, never committed).
    pub committed: bool,
}

/// Every location under a data directory: those with a commit marker, and those with an index
/// file but no marker (flushed before a restart, never committed). Names that are not Sluice's
/// are skipped.
pub fn scan(root: &Path) -> Vec<Found> {
    let entries = |dir: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(dir)
            .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default()
    };
    let name = |path: &Path| {
        path.file_name()
            .and_then(|n| n.to_str())
            .map(str::to_string)
    };
    let mut out = Vec::new();
    for app_dir in entries(root).into_iter().filter(|p| p.is_dir()) {
        let Some(app) = name(&app_dir) else { continue };
        if sluice_protocol::ids::validate_app_id(&app).is_err() {
            continue;
        }
        for shuffle_dir in entries(&app_dir).into_iter().filter(|p| p.is_dir()) {
            let Some(shuffle_id) = name(&shuffle_dir).and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let shuffle = ShuffleKey::new(app.as_str(), shuffle_id);
            for file in entries(&shuffle_dir) {
                let committed = match file.extension().and_then(|e| e.to_str()) {
                    Some("committed") => true,
                    Some("index") => false,
                    _ => continue,
                };
                let Some(id) = file
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .and_then(LocationId::parse_stem)
                else {
                    continue;
                };
                let files = LocationFiles::in_dir(&shuffle_dir, id);
                if !committed && files.marker().exists() {
                    continue; // listed through its marker
                }
                out.push(Found {
                    shuffle: shuffle.clone(),
                    id,
                    files,
                    committed,
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stems_round_trip_and_nothing_else_parses() {
        for id in [
            LocationId::new(0, 0, 0).unwrap(),
            LocationId::new(u32::MAX, 7, 1).unwrap(),
        ] {
            assert_eq!(LocationId::parse_stem(&id.stem()), Some(id));
        }
        for bad in ["", "1-2", "1-2-x", "1-2-p-3", "a-2-p", "1--p", "-1-2-p"] {
            assert_eq!(LocationId::parse_stem(bad), None, "{bad:?}");
        }
        assert!(LocationId::new(1, 2, 7).is_err());
    }

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
        let files = LocationFiles::in_dir(dir.path(), LocationId::new(3, 1, 0).unwrap());
        let path = files.marker();
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

    #[test]
    fn scan_finds_committed_and_flushed_locations() {
        let root = tempfile::tempdir().unwrap();
        let shuffle = ShuffleKey::new("app-1", 4);
        let committed =
            LocationFiles::new(root.path(), &shuffle, LocationId::new(0, 0, 0).unwrap());
        let flushed = LocationFiles::new(root.path(), &shuffle, LocationId::new(1, 2, 1).unwrap());
        for files in [&committed, &flushed] {
            files.open_for_write(true).unwrap();
        }
        std::fs::write(committed.marker(), "x").unwrap();
        std::fs::write(root.path().join("app-1/4/notes.txt"), "x").unwrap();
        std::fs::create_dir_all(root.path().join("not an app/1")).unwrap();
        let mut found: Vec<(u32, bool)> = scan(root.path())
            .into_iter()
            .map(|f| (f.id.partition, f.committed))
            .collect();
        found.sort();
        assert_eq!(found, vec![(0, true), (1, false)]);
    }
}
