//! Where a location's files live, and the one place their names are built and parsed.
//!
//! ```text
//! <data dir>/<app>/<shuffle>/<partition>-<epoch>-<p|r>.data        batches, appended
//! <data dir>/<app>/<shuffle>/<partition>-<epoch>-<p|r>.index       one entry per batch
//! <data dir>/<app>/<shuffle>/commits                               the commit journal
//! ```
//!
//! A location is identified by a [`LocationId`]; [`LocationFiles`] holds its paths and opens
//! them; [`CommitMarker`] is what a committed location holds, recorded last so that a restarted
//! worker knows which files were whole; [`scan`] finds every location a data directory holds.
//!
//! Commit records go to one journal per shuffle directory, one line per location, all the lines
//! of one commit call in one append: creating a file costs far more than writing a line (about
//! 0.2 ms on the cloud disks Sluice runs on), and a shuffle of 100k small partitions would
//! otherwise create 100k marker files at commit. Each line carries its own CRC, so a torn append
//! loses only the locations of that append, which are then recovered from their files as
//! flushed, never committed. Workers before the journal wrote one `<stem>.committed` file per
//! location; those are still read.

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

/// Whether a flush opens a location's index file (see [`LocationFiles::open_for_write`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexOpen {
    /// The index is kept in memory.
    No,
    Open,
    /// Create (truncate) it.
    Create,
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

    /// For a location kept on the DFS: its totals (a marker), written last.
    pub fn dfs_marker(&self) -> PathBuf {
        self.data.with_extension("dfs")
    }

    /// For a location kept on the DFS: a local copy of its index.
    pub fn dfs_index(&self) -> PathBuf {
        self.data.with_extension("dfsindex")
    }

    /// Opens the data file for writing, and the index file as `index` says; `create` makes
    /// (truncates) the data file and its directory. Blocking: call from the engine's thread or
    /// `spawn_blocking`.
    pub fn open_for_write(
        &self,
        create: bool,
        index: IndexOpen,
    ) -> std::io::Result<(File, Option<File>)> {
        if create {
            if let Some(dir) = self.data.parent() {
                std::fs::create_dir_all(dir)?;
            }
        }
        let open = |path: &Path, create: bool| {
            std::fs::OpenOptions::new()
                .write(true)
                .create(create)
                .truncate(create)
                .open(path)
        };
        let data = open(&self.data, create)?;
        let index = match index {
            IndexOpen::No => None,
            IndexOpen::Open => Some(open(&self.index, false)?),
            IndexOpen::Create => Some(open(&self.index, true)?),
        };
        Ok((data, index))
    }
}

/// The commit journal of the shuffle directory `dir`.
pub fn journal(dir: &Path) -> PathBuf {
    dir.join("commits")
}

/// Appends the commit records of `locations` to the journal of `dir` in one write (creating the
/// directory and the journal when needed), then syncs it when `fsync`. Blocking.
///
/// A write that fails part way (a full disk) leaves a torn line: the commit is reported failed,
/// the worker goes on, and the next append starts on a new line.
pub fn record_commits(
    dir: &Path,
    locations: &[(LocationId, CommitMarker)],
    fsync: bool,
) -> std::io::Result<()> {
    // A leading newline ends whatever a failed or interrupted append left half written, so
    // that torn line cannot swallow this append's first record.
    let mut text = String::with_capacity(1 + locations.len() * 96);
    text.push('\n');
    for (id, marker) in locations {
        text.push_str(&marker.record(*id));
    }
    std::fs::create_dir_all(dir)?;
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(journal(dir))?;
    std::io::Write::write_all(&mut file, text.as_bytes())?;
    if fsync {
        file.sync_data()?;
    }
    Ok(())
}

/// The commit records in the journal of `dir` (none when it has no journal). Lines that are
/// torn or fail their CRC are skipped; a location recorded twice keeps its last record. Blocking.
pub fn read_commits(dir: &Path) -> std::collections::HashMap<LocationId, CommitMarker> {
    let Ok(bytes) = std::fs::read(journal(dir)) else {
        return Default::default();
    };
    bytes
        .split_inclusive(|b| *b == b'\n')
        .filter_map(|line| std::str::from_utf8(line).ok())
        .filter_map(CommitMarker::parse_record)
        .collect()
}

/// What a committed location holds: a line of its shuffle's commit journal (or, written by
/// workers before the journal, `<stem>.committed` beside its files).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitMarker {
    pub data_len: u64,
    pub index_len: u64,
    pub stats: pb::BatchStats,
    pub created: bool,
}

impl CommitMarker {
    const MAGIC: &'static str = "sluice-committed-v1";
    const RECORD: &'static str = "sluice-committed-v2";

    /// The marker's fields, as both forms write them.
    fn fields(&self) -> String {
        format!(
            "{} {} {} {} {} {}",
            self.data_len,
            self.index_len,
            self.stats.bytes,
            self.stats.batches,
            self.stats.checksum,
            u8::from(self.created)
        )
    }

    /// The journal line recording `id` as committed with this marker: the fields, then the CRC
    /// of everything before it.
    pub fn record(&self, id: LocationId) -> String {
        let body = format!("{} {} {}", Self::RECORD, id.stem(), self.fields());
        let crc = crc32fast::hash(body.as_bytes());
        format!("{body} {crc:08x}\n")
    }

    /// Parses a journal line (with its newline); `None` for anything that is not a whole,
    /// well-formed line whose CRC matches.
    pub fn parse_record(line: &str) -> Option<(LocationId, CommitMarker)> {
        let line = line.strip_suffix('\n')?;
        let (body, crc) = line.rsplit_once(' ')?;
        if crc.len() != 8 || u32::from_str_radix(crc, 16).ok()? != crc32fast::hash(body.as_bytes())
        {
            return None;
        }
        let rest = body.strip_prefix(Self::RECORD)?.strip_prefix(' ')?;
        let (stem, fields) = rest.split_once(' ')?;
        let id = LocationId::parse_stem(stem)?;
        Some((id, CommitMarker::parse_fields(fields)?))
    }

    /// The text of a marker file (what [`CommitMarker::parse`] reads).
    pub fn marker_text(&self) -> String {
        format!("{} {}\n", Self::MAGIC, self.fields())
    }

    /// Writes the marker file of a worker before the commit journal (what [`CommitMarker::parse`]
    /// reads). Blocking.
    #[cfg(test)]
    pub fn write_legacy(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, format!("{} {}\n", Self::MAGIC, self.fields()))
    }

    /// Parses a marker file; `None` for anything that is not a whole, well-formed one.
    pub fn parse(text: &str) -> Option<CommitMarker> {
        CommitMarker::parse_fields(
            text.trim_end()
                .strip_prefix(Self::MAGIC)?
                .strip_prefix(' ')?,
        )
    }

    fn parse_fields(text: &str) -> Option<CommitMarker> {
        let mut fields = text.split(' ');
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

/// Whether and how a location found by [`scan`] was committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Commit {
    /// Flushed, never committed.
    No,
    /// Recorded in its shuffle's commit journal.
    Recorded(CommitMarker),
    /// By a `<stem>.committed` file (workers before the journal).
    MarkerFile,
    /// Kept on the DFS: `<stem>.dfs` holds its totals, `<stem>.dfsindex` its index.
    OnDfs(CommitMarker),
}

/// A location found on disk by [`scan`].
#[derive(Debug, Clone)]
pub struct Found {
    pub shuffle: ShuffleKey,
    pub id: LocationId,
    pub files: LocationFiles,
    pub commit: Commit,
}

/// Every location under a data directory: those its shuffle's commit journal or a marker file
/// records as committed, those recorded as on the DFS (their `.dfs` marker wins over a journal
/// record or a data file left from before they moved), and those with a data file but no
/// commit record (flushed before a restart, never committed). Names that are not Sluice's are
/// skipped. The `.handover` file of a hand-over cut off before it completed is deleted: nothing
/// refers to it.
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
            let recorded = read_commits(&shuffle_dir);
            for (&id, marker) in &recorded {
                if LocationFiles::in_dir(&shuffle_dir, id)
                    .dfs_marker()
                    .exists()
                {
                    continue; // moved to the DFS after it was committed here
                }
                out.push(Found {
                    shuffle: shuffle.clone(),
                    id,
                    files: LocationFiles::in_dir(&shuffle_dir, id),
                    commit: Commit::Recorded(*marker),
                });
            }
            for file in entries(&shuffle_dir) {
                let marker_file = match file.extension().and_then(|e| e.to_str()) {
                    Some("committed") => true,
                    Some("data") => false,
                    Some("dfs") => {
                        let found = file
                            .file_stem()
                            .and_then(|s| s.to_str())
                            .and_then(LocationId::parse_stem)
                            .zip(
                                std::fs::read_to_string(&file)
                                    .ok()
                                    .and_then(|text| CommitMarker::parse(&text)),
                            );
                        if let Some((id, marker)) = found {
                            out.push(Found {
                                shuffle: shuffle.clone(),
                                id,
                                files: LocationFiles::in_dir(&shuffle_dir, id),
                                commit: Commit::OnDfs(marker),
                            });
                        }
                        continue;
                    }
                    Some("handover") => {
                        if let Err(e) = std::fs::remove_file(&file) {
                            tracing::warn!(file = %file.display(), error = %e, "cannot delete an unfinished hand-over");
                        }
                        continue;
                    }
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
                if recorded.contains_key(&id)
                    || (!marker_file && files.marker().exists())
                    || files.dfs_marker().exists()
                {
                    continue; // listed through its record, its marker file or its DFS marker
                }
                out.push(Found {
                    shuffle: shuffle.clone(),
                    id,
                    files,
                    commit: if marker_file {
                        Commit::MarkerFile
                    } else {
                        Commit::No
                    },
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

    fn marker(data_len: u64, created: bool) -> CommitMarker {
        CommitMarker {
            data_len,
            index_len: if created { 240 } else { 0 },
            stats: pb::BatchStats {
                bytes: data_len,
                batches: 10,
                checksum: u64::MAX - 3,
            },
            created,
        }
    }

    #[test]
    fn marker_files_round_trip_and_reject_anything_else() {
        let dir = tempfile::tempdir().unwrap();
        let marker = marker(123_456, true);
        let files = LocationFiles::in_dir(dir.path(), LocationId::new(3, 1, 0).unwrap());
        let path = files.marker();
        marker.write_legacy(&path).unwrap();
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
    fn journal_records_round_trip_and_reject_torn_or_altered_lines() {
        let id = LocationId::new(7, 2, 1).unwrap();
        let record = marker(99, true).record(id);
        assert!(record.starts_with("sluice-committed-v2 7-2-r 99 240 99 10 "));
        assert_eq!(
            CommitMarker::parse_record(&record),
            Some((id, marker(99, true)))
        );
        let altered = record.replacen(" 99 240", " 98 240", 1);
        for bad in [
            "",
            &record[..record.len() - 1],
            &record[..record.len() / 2],
            &altered,
            &record.replacen("7-2-r", "7-2-x", 1),
            &format!("x{record}"),
        ] {
            assert_eq!(CommitMarker::parse_record(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn scan_finds_committed_and_flushed_locations() {
        let root = tempfile::tempdir().unwrap();
        let shuffle = ShuffleKey::new("app-1", 4);
        let dir = shuffle_dir(root.path(), &shuffle);
        let at = |partition| LocationId::new(partition, 0, 0).unwrap();
        // 0: recorded in the journal; 1: flushed, never committed; 5: a marker file;
        // 7: recorded, never pushed to (no files); 8: its record torn by a crash mid-append.
        for partition in [0, 1, 5, 8] {
            LocationFiles::new(root.path(), &shuffle, at(partition))
                .open_for_write(true, IndexOpen::No)
                .unwrap();
        }
        record_commits(&dir, &[(at(0), marker(0, true))], false).unwrap();
        record_commits(&dir, &[(at(7), marker(0, false))], true).unwrap();
        let torn = marker(0, true).record(at(8));
        let mut journal_file = std::fs::OpenOptions::new()
            .append(true)
            .open(journal(&dir))
            .unwrap();
        std::io::Write::write_all(&mut journal_file, &torn.as_bytes()[..20]).unwrap();
        // The next append is read whole after the torn line.
        record_commits(&dir, &[(at(9), marker(0, false))], false).unwrap();
        marker(0, true)
            .write_legacy(&LocationFiles::new(root.path(), &shuffle, at(5)).marker())
            .unwrap();
        // 10: recorded, then moved to the DFS; 11: moved to the DFS as it was written, its
        // local data file not deleted yet. Each is found once, on the DFS.
        record_commits(&dir, &[(at(10), marker(0, true))], false).unwrap();
        LocationFiles::new(root.path(), &shuffle, at(11))
            .open_for_write(true, IndexOpen::No)
            .unwrap();
        for partition in [10, 11] {
            let files = LocationFiles::new(root.path(), &shuffle, at(partition));
            std::fs::write(files.dfs_marker(), marker(0, true).marker_text()).unwrap();
        }
        // An unfinished hand-over is deleted.
        let handover = LocationFiles::new(root.path(), &shuffle, at(12))
            .data
            .with_extension("handover");
        std::fs::write(&handover, "half").unwrap();
        std::fs::write(root.path().join("app-1/4/notes.txt"), "x").unwrap();
        std::fs::create_dir_all(root.path().join("not an app/1")).unwrap();
        let mut found: Vec<(u32, Commit)> = scan(root.path())
            .into_iter()
            .map(|f| (f.id.partition, f.commit))
            .collect();
        found.sort_by_key(|(partition, _)| *partition);
        assert_eq!(
            found,
            vec![
                (0, Commit::Recorded(marker(0, true))),
                (1, Commit::No),
                (5, Commit::MarkerFile),
                (7, Commit::Recorded(marker(0, false))),
                (8, Commit::No),
                (9, Commit::Recorded(marker(0, false))),
                (10, Commit::OnDfs(marker(0, true))),
                (11, Commit::OnDfs(marker(0, true))),
            ]
        );
        assert!(!handover.exists());
    }
}
