//! The Raft state machine: a [`Machine`] the caller shares, and its snapshot on disk.
//!
//! The machine lives in memory and is rebuilt on restart from the last snapshot, after which
//! openraft replays the log entries that follow it. A snapshot is one file,
//! `<dir>/snapshot/current.snap`:
//!
//! ```text
//! 0        8          12               12+m         20+m            20+m+d = file length
//! +--------+----------+----------------+------------+---------------+
//! | magic  | m: u32be | meta (JSON,    | d: u64be   | data (d bytes:|
//! |SLCSNAP1|          | SnapshotMeta)  |            | Machine bytes)|
//! +--------+----------+----------------+------------+---------------+
//! ```
//!
//! It is replaced whole: written to `current.snap.tmp`, fsynced, renamed over `current.snap`,
//! and the directory fsynced, so a crash leaves the old snapshot or the new one. A file whose
//! lengths do not add up to its size (torn, truncated) is an error naming it.

// openraft's traits return its StorageError (224 bytes); the helpers here return it as is.
#![allow(clippy::result_large_err)]

use std::fs::File;
use std::io::{self, BufWriter, Cursor, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    BasicNode, Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend,
    RaftSnapshotBuilder, SnapshotMeta, StorageError, StoredMembership,
};

use super::log_store::io_error;
use super::{Command, Machine, NodeId, Reply, TypeConfig};

/// The snapshot's file name inside `<dir>/snapshot/`.
pub const SNAPSHOT_FILE: &str = "current.snap";
const SNAPSHOT_TMP: &str = "current.snap.tmp";
const SNAPSHOT_DIR: &str = "snapshot";
const MAGIC: &[u8; 8] = b"SLCSNAP1";

type Meta = SnapshotMeta<NodeId, BasicNode>;
type StoreResult<T> = Result<T, StorageError<NodeId>>;

/// Applies committed entries to a shared [`Machine`] and keeps its snapshot on disk.
pub struct StateMachineStore<M: Machine> {
    machine: Arc<Mutex<M>>,
    last_applied: Option<LogId<NodeId>>,
    last_membership: StoredMembership<NodeId, BasicNode>,
    snapshots: Arc<SnapshotDir>,
}

/// The snapshot directory. Builds run in their own tasks, beside applies and installs.
struct SnapshotDir {
    dir: PathBuf,
    /// The meta of the snapshot on disk; held while the file is replaced.
    current: Mutex<Option<Meta>>,
    /// Snapshots built by this process, to tell apart snapshots of the same log id.
    built: AtomicU64,
}

/// Where a snapshot being saved comes from.
#[derive(Clone, Copy)]
enum Source {
    Build,
    Install,
}

/// A snapshot of the machine taken by [`StateMachineStore`]: its bytes and the log position
/// they stand for, captured together. Building writes it to disk.
pub struct SnapshotBuilder {
    taken: Option<(Meta, Vec<u8>)>,
    snapshots: Arc<SnapshotDir>,
}

impl<M: Machine> StateMachineStore<M> {
    /// Opens the store over `machine`, restoring it from `<dir>/snapshot/` if a snapshot is
    /// there. The caller reads the state through the same `machine`. Blocks: call it before
    /// serving, or from a blocking task.
    pub fn open(dir: &Path, machine: Arc<Mutex<M>>) -> StoreResult<Self> {
        let dir = dir.join(SNAPSHOT_DIR);
        let write_error = |e: io::Error| {
            io_error(
                ErrorSubject::Snapshot(None),
                ErrorVerb::Write,
                format!("{}: {e}", dir.display()),
            )
        };
        std::fs::create_dir_all(&dir).map_err(write_error)?;
        match std::fs::remove_file(dir.join(SNAPSHOT_TMP)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(write_error(e)),
            _ => {}
        }
        let mut store = StateMachineStore {
            machine,
            last_applied: None,
            last_membership: StoredMembership::default(),
            snapshots: Arc::new(SnapshotDir {
                dir,
                current: Mutex::new(None),
                built: AtomicU64::new(0),
            }),
        };
        if let Some((meta, data)) = store.snapshots.read()? {
            restore(&store.machine, &meta, &data)?;
            tracing::info!(snapshot = %meta, bytes = data.len(), "state restored from snapshot");
            store.last_applied = meta.last_log_id;
            store.last_membership = meta.last_membership.clone();
            *store.snapshots.lock_current()? = Some(meta);
        }
        Ok(store)
    }

    fn apply_entries(
        &mut self,
        entries: impl Iterator<Item = Entry<TypeConfig>>,
    ) -> StoreResult<Vec<Reply>> {
        let mut machine = lock(&self.machine, ErrorVerb::Write)?;
        let mut replies = Vec::new();
        for entry in entries {
            self.last_applied = Some(entry.log_id);
            replies.push(match entry.payload {
                EntryPayload::Normal(Command(command)) => Reply(machine.apply(&command)),
                EntryPayload::Blank => Reply::default(),
                EntryPayload::Membership(membership) => {
                    self.last_membership = StoredMembership::new(Some(entry.log_id), membership);
                    Reply::default()
                }
            });
        }
        Ok(replies)
    }
}

impl<M: Machine> RaftStateMachine<TypeConfig> for StateMachineStore<M> {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> StoreResult<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>)> {
        Ok((self.last_applied, self.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StoreResult<Vec<Reply>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        self.apply_entries(entries.into_iter())
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        // Taken here, while applies wait for this call: the bytes and the log id agree. The
        // build itself runs later, in its own task.
        let taken = lock(&self.machine, ErrorVerb::Read)
            .map(|machine| machine.snapshot())
            .map(|data| {
                let n = self.snapshots.built.fetch_add(1, Ordering::Relaxed);
                let id = match &self.last_applied {
                    Some(log_id) => format!("{log_id}-{n}"),
                    None => format!("none-{n}"),
                };
                let meta = Meta {
                    last_log_id: self.last_applied,
                    last_membership: self.last_membership.clone(),
                    snapshot_id: id,
                };
                (meta, data)
            });
        SnapshotBuilder {
            // A poisoned lock is reported by build_snapshot.
            taken: taken.ok(),
            snapshots: self.snapshots.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> StoreResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StoreResult<()> {
        let data = snapshot.into_inner();
        let machine = self.machine.clone();
        let snapshots = self.snapshots.clone();
        let installed = meta.clone();
        blocking(move || {
            restore(&machine, &installed, &data)?;
            snapshots.replace(&installed, &data, Source::Install)
        })
        .await?;
        tracing::info!(snapshot = %meta, "snapshot installed");
        self.last_applied = meta.last_log_id;
        self.last_membership = meta.last_membership.clone();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StoreResult<Option<Snapshot<TypeConfig>>> {
        let snapshots = self.snapshots.clone();
        let read = blocking(move || snapshots.read()).await?;
        Ok(read.map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> StoreResult<Snapshot<TypeConfig>> {
        // openraft builds once per builder; the bytes move into the snapshot it returns.
        let Some((meta, data)) = self.taken.take() else {
            return Err(io_error(
                ErrorSubject::StateMachine,
                ErrorVerb::Read,
                "no snapshot taken: the state machine lock is poisoned, or this builder was used",
            ));
        };
        let snapshots = self.snapshots.clone();
        let (meta, data) = blocking(move || {
            snapshots.replace(&meta, &data, Source::Build)?;
            Ok((meta, data))
        })
        .await?;
        tracing::info!(snapshot = %meta, bytes = data.len(), "snapshot built");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl SnapshotDir {
    fn path(&self) -> PathBuf {
        self.dir.join(SNAPSHOT_FILE)
    }

    fn lock_current(&self) -> StoreResult<MutexGuard<'_, Option<Meta>>> {
        self.current.lock().map_err(|_| {
            io_error(
                ErrorSubject::Snapshot(None),
                ErrorVerb::Write,
                format!("{}: lock poisoned", self.dir.display()),
            )
        })
    }

    /// Makes `meta` + `data` the snapshot on disk. A build keeps a newer snapshot there (it
    /// raced the install of a later one); an install always replaces it.
    fn replace(&self, meta: &Meta, data: &[u8], from: Source) -> StoreResult<()> {
        let mut current = self.lock_current()?;
        let newer = current
            .as_ref()
            .filter(|c| c.last_log_id > meta.last_log_id);
        if let (Source::Build, Some(newer)) = (from, newer) {
            tracing::info!(snapshot = %meta, kept = %newer, "snapshot not saved, a newer one is");
            return Ok(());
        }
        write_snapshot(&self.dir, meta, data).map_err(|e| {
            io_error(
                ErrorSubject::Snapshot(Some(meta.signature())),
                ErrorVerb::Write,
                format!("{}: {e}", self.path().display()),
            )
        })?;
        *current = Some(meta.clone());
        Ok(())
    }

    fn read(&self) -> StoreResult<Option<(Meta, Vec<u8>)>> {
        let path = self.path();
        read_snapshot(&path).map_err(|e| {
            io_error(
                ErrorSubject::Snapshot(None),
                ErrorVerb::Read,
                format!("{}: {e}", path.display()),
            )
        })
    }
}

fn lock<M>(machine: &Mutex<M>, verb: ErrorVerb) -> StoreResult<MutexGuard<'_, M>> {
    machine.lock().map_err(|_| {
        io_error(
            ErrorSubject::StateMachine,
            verb,
            "state machine lock poisoned: an apply panicked",
        )
    })
}

fn restore<M: Machine>(machine: &Mutex<M>, meta: &Meta, data: &[u8]) -> StoreResult<()> {
    lock(machine, ErrorVerb::Write)?.restore(data).map_err(|e| {
        io_error(
            ErrorSubject::Snapshot(Some(meta.signature())),
            ErrorVerb::Read,
            format!("snapshot {} does not restore: {e}", meta.snapshot_id),
        )
    })
}

/// Runs `f` on the blocking pool. A panic in `f` comes back as an error.
async fn blocking<T, F>(f: F) -> StoreResult<T>
where
    T: Send + 'static,
    F: FnOnce() -> StoreResult<T> + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result,
        Err(e) => Err(io_error(ErrorSubject::Snapshot(None), ErrorVerb::Write, e)),
    }
}

fn write_snapshot(dir: &Path, meta: &Meta, data: &[u8]) -> io::Result<()> {
    let meta_json = serde_json::to_vec(meta)?;
    let meta_len = u32::try_from(meta_json.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "snapshot meta over 4 GiB"))?;
    let tmp = dir.join(SNAPSHOT_TMP);
    let mut out = BufWriter::new(File::create(&tmp)?);
    out.write_all(MAGIC)?;
    out.write_all(&meta_len.to_be_bytes())?;
    out.write_all(&meta_json)?;
    out.write_all(&(data.len() as u64).to_be_bytes())?;
    out.write_all(data)?;
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, dir.join(SNAPSHOT_FILE))?;
    File::open(dir)?.sync_all()
}

/// Reads the snapshot at `path`, `None` if there is none. Every length is checked against the
/// file's size before anything is allocated.
fn read_snapshot(path: &Path) -> io::Result<Option<(Meta, Vec<u8>)>> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let size = file.metadata()?.len();
    let invalid = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
    let torn = |want: u64| {
        invalid(format!(
            "torn snapshot: {want} bytes needed, {size} present"
        ))
    };

    let mut head = [0u8; 12];
    if size < head.len() as u64 {
        return Err(torn(head.len() as u64));
    }
    file.read_exact(&mut head)?;
    if &head[..8] != MAGIC {
        return Err(invalid("not a sluice snapshot (bad magic)".into()));
    }
    let meta_len = u64::from(u32::from_be_bytes([head[8], head[9], head[10], head[11]]));
    let data_len_at = 12 + meta_len;
    if size < data_len_at + 8 {
        return Err(torn(data_len_at + 8));
    }
    let mut meta = vec![0u8; meta_len as usize];
    file.read_exact(&mut meta)?;
    let meta: Meta = serde_json::from_slice(&meta)
        .map_err(|e| invalid(format!("snapshot meta does not decode: {e}")))?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len)?;
    let data_len = u64::from_be_bytes(len);
    let want = (data_len_at + 8).saturating_add(data_len);
    if want != size {
        return Err(torn(want));
    }
    let mut data = vec![0u8; data_len as usize];
    file.read_exact(&mut data)?;
    Ok(Some((meta, data)))
}
