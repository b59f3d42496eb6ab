//! The Raft log on disk: one redb database, `<dir>/raft-log.redb`.
//!
//! ```text
//! table "entries"   u64 log index  ->  serde_json(Entry<TypeConfig>)
//! table "meta"      "vote"         ->  serde_json(Vote)
//!                   "committed"    ->  serde_json(Option<LogId>)
//!                   "last_purged"  ->  serde_json(LogId)
//! ```
//!
//! Every append, vote, truncate and purge is one redb write transaction, committed with
//! `Durability::Immediate` (fsync) before it is acknowledged; a purge removes the entries and
//! records the purged id in the same transaction. redb calls block, so they run on tokio's
//! blocking pool and an fsync never stalls a runtime worker. openraft serializes the writes
//! (each takes `&mut self` and is awaited); readers clone the store and read snapshots of the
//! database concurrently.

// openraft's traits return its StorageError (224 bytes); the helpers here return it as is.
#![allow(clippy::result_large_err)]

use std::fmt::{Debug, Display};
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    AnyError, Entry, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftLogReader, StorageError,
    StorageIOError, Vote,
};
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{NodeId, TypeConfig};

/// The log database's file name inside the Raft directory.
pub const LOG_FILE: &str = "raft-log.redb";

const ENTRIES: TableDefinition<u64, &[u8]> = TableDefinition::new("entries");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const LAST_PURGED: &str = "last_purged";

/// The Raft log and vote, persisted in redb. Cheap to clone: clones share the database.
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    path: PathBuf,
}

impl LogStore {
    /// Opens (or creates) `<dir>/raft-log.redb`. A file that is not a readable log is an error
    /// naming it. Blocks: call it before serving, or from a blocking task.
    pub fn open(dir: &Path) -> Result<LogStore, StorageError<NodeId>> {
        let path = dir.join(LOG_FILE);
        let fail = |verb, e: &dyn Display| {
            io_error(
                ErrorSubject::Store,
                verb,
                format!("{}: {e}", path.display()),
            )
        };
        std::fs::create_dir_all(dir).map_err(|e| fail(ErrorVerb::Write, &e))?;
        let db = Database::create(&path).map_err(|e| fail(ErrorVerb::Read, &e))?;
        let inner = Inner { db, path };
        // Create the tables once, so readers never meet a missing one.
        inner.write(ErrorSubject::Store, Durability::Immediate, |txn| {
            txn.open_table(ENTRIES)?;
            txn.open_table(META)?;
            Ok(())
        })?;
        // Decode what a restart reads first, so a corrupt file fails here and not mid-election.
        inner.log_state()?;
        inner.meta::<Vote<NodeId>>(VOTE, ErrorSubject::Vote)?;
        inner.meta::<Option<LogId<NodeId>>>(COMMITTED, ErrorSubject::Store)?;
        Ok(LogStore {
            inner: Arc::new(inner),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs `f` on the blocking pool. A panic in `f` comes back as an error.
    async fn blocking<T, F>(&self, subject: ErrorSubject<NodeId>, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> StoreResult<T> + Send + 'static,
    {
        let inner = self.inner.clone();
        match tokio::task::spawn_blocking(move || f(&inner)).await {
            Ok(result) => result,
            Err(e) => Err(io_error(subject, ErrorVerb::Write, e)),
        }
    }

    async fn save_meta<V>(
        &mut self,
        key: &'static str,
        value: &V,
        subject: ErrorSubject<NodeId>,
        durability: Durability,
    ) -> StoreResult<()>
    where
        V: Serialize,
    {
        let bytes = encode(value, &subject)?;
        let s = subject.clone();
        self.blocking(subject, move |inner| {
            inner.write(s, durability, |txn| {
                txn.open_table(META)?.insert(key, bytes.as_slice())?;
                Ok(())
            })
        })
        .await
    }
}

type StoreResult<T> = Result<T, StorageError<NodeId>>;

impl Inner {
    /// One write transaction, committed with `durability`. Errors name the file.
    fn write<T>(
        &self,
        subject: ErrorSubject<NodeId>,
        durability: Durability,
        f: impl FnOnce(&WriteTransaction) -> Result<T, redb::Error>,
    ) -> StoreResult<T> {
        let run = || -> Result<T, redb::Error> {
            let mut txn = self.db.begin_write()?;
            txn.set_durability(durability)?;
            let value = f(&txn)?;
            txn.commit()?;
            Ok(value)
        };
        run().map_err(|e| self.error(subject, ErrorVerb::Write, e))
    }

    fn error(
        &self,
        subject: ErrorSubject<NodeId>,
        verb: ErrorVerb,
        e: impl Display,
    ) -> StorageError<NodeId> {
        io_error(subject, verb, format!("{}: {e}", self.path.display()))
    }

    fn meta<V: DeserializeOwned>(
        &self,
        key: &str,
        subject: ErrorSubject<NodeId>,
    ) -> StoreResult<Option<V>> {
        let read = || -> Result<Option<V>, redb::Error> {
            let txn = self.db.begin_read()?;
            let table = txn.open_table(META)?;
            let Some(value) = table.get(key)? else {
                return Ok(None);
            };
            decode(value.value(), || format!("meta key {key:?}")).map(Some)
        };
        read().map_err(|e| self.error(subject, ErrorVerb::Read, e))
    }

    fn log_state(&self) -> StoreResult<LogState<TypeConfig>> {
        let last_purged_log_id = self.meta::<LogId<NodeId>>(LAST_PURGED, ErrorSubject::Logs)?;
        let read = || -> Result<Option<LogId<NodeId>>, redb::Error> {
            let txn = self.db.begin_read()?;
            let table = txn.open_table(ENTRIES)?;
            let Some((index, value)) = table.last()? else {
                return Ok(None);
            };
            let entry: Entry<TypeConfig> =
                decode(value.value(), || format!("log entry {}", index.value()))?;
            Ok(Some(entry.log_id))
        };
        let last = read().map_err(|e| self.error(ErrorSubject::Logs, ErrorVerb::Read, e))?;
        Ok(LogState {
            last_log_id: last.or(last_purged_log_id),
            last_purged_log_id,
        })
    }

    fn entries(&self, start: u64, end: Option<u64>) -> StoreResult<Vec<Entry<TypeConfig>>> {
        let read = || -> Result<Vec<Entry<TypeConfig>>, redb::Error> {
            let txn = self.db.begin_read()?;
            let table = txn.open_table(ENTRIES)?;
            let range = match end {
                Some(end) => table.range(start..end)?,
                None => table.range(start..)?,
            };
            let mut entries = Vec::new();
            for item in range {
                let (index, value) = item?;
                entries.push(decode(value.value(), || {
                    format!("log entry {}", index.value())
                })?);
            }
            Ok(entries)
        };
        read().map_err(|e| self.error(ErrorSubject::Logs, ErrorVerb::Read, e))
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StoreResult<Vec<Entry<TypeConfig>>> {
        // As a half-open range [start, end), `end` None for unbounded; an empty range reads
        // nothing (redb, like BTreeMap, refuses start > end).
        let start = match range.start_bound() {
            Bound::Included(&s) => Some(s),
            Bound::Excluded(&s) => s.checked_add(1),
            Bound::Unbounded => Some(0),
        };
        let end = match range.end_bound() {
            Bound::Included(&e) => e.checked_add(1),
            Bound::Excluded(&e) => Some(e),
            Bound::Unbounded => None,
        };
        let Some(start) = start else {
            return Ok(Vec::new());
        };
        if end.is_some_and(|end| end <= start) {
            return Ok(Vec::new());
        }
        self.blocking(ErrorSubject::Logs, move |inner| inner.entries(start, end))
            .await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> StoreResult<LogState<TypeConfig>> {
        self.blocking(ErrorSubject::Logs, |inner| inner.log_state())
            .await
    }

    async fn get_log_reader(&mut self) -> LogStore {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StoreResult<()> {
        self.save_meta(VOTE, vote, ErrorSubject::Vote, Durability::Immediate)
            .await
    }

    async fn read_vote(&mut self) -> StoreResult<Option<Vote<NodeId>>> {
        self.blocking(ErrorSubject::Vote, |inner| {
            inner.meta(VOTE, ErrorSubject::Vote)
        })
        .await
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StoreResult<()> {
        // Not fsynced on its own: it rides along with the next append or vote. A committed id
        // lost in a crash is an older one, which is still committed; openraft only re-applies
        // less on restart.
        self.save_meta(COMMITTED, &committed, ErrorSubject::Store, Durability::None)
            .await
    }

    async fn read_committed(&mut self) -> StoreResult<Option<LogId<NodeId>>> {
        let committed = self
            .blocking(ErrorSubject::Store, |inner| {
                inner.meta::<Option<LogId<NodeId>>>(COMMITTED, ErrorSubject::Store)
            })
            .await?;
        Ok(committed.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StoreResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let encoded = entries
            .into_iter()
            .map(|entry| {
                let bytes = encode(&entry, &ErrorSubject::Log(entry.log_id))?;
                Ok((entry.log_id.index, bytes))
            })
            .collect::<StoreResult<Vec<_>>>()?;
        let result = self
            .blocking(ErrorSubject::Logs, move |inner| {
                inner.write(ErrorSubject::Logs, Durability::Immediate, |txn| {
                    let mut table = txn.open_table(ENTRIES)?;
                    for (index, bytes) in &encoded {
                        table.insert(index, bytes.as_slice())?;
                    }
                    Ok(())
                })
            })
            .await;
        match &result {
            Ok(()) => callback.log_io_completed(Ok(())),
            Err(e) => callback.log_io_completed(Err(std::io::Error::other(e.to_string()))),
        }
        result
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StoreResult<()> {
        tracing::debug!(since = %log_id, "truncating the raft log");
        self.blocking(ErrorSubject::Log(log_id), move |inner| {
            inner.write(ErrorSubject::Log(log_id), Durability::Immediate, |txn| {
                txn.open_table(ENTRIES)?
                    .retain_in(log_id.index.., |_, _| false)?;
                Ok(())
            })
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StoreResult<()> {
        tracing::debug!(upto = %log_id, "purging the raft log");
        let bytes = encode(&log_id, &ErrorSubject::Log(log_id))?;
        self.blocking(ErrorSubject::Log(log_id), move |inner| {
            inner.write(ErrorSubject::Log(log_id), Durability::Immediate, |txn| {
                txn.open_table(META)?
                    .insert(LAST_PURGED, bytes.as_slice())?;
                txn.open_table(ENTRIES)?
                    .retain_in(..=log_id.index, |_, _| false)?;
                Ok(())
            })
        })
        .await
    }
}

/// A storage error about `subject`; `e` should name the file.
pub(super) fn io_error(
    subject: ErrorSubject<NodeId>,
    verb: ErrorVerb,
    e: impl Display,
) -> StorageError<NodeId> {
    StorageIOError::new(subject, verb, AnyError::error(e)).into()
}

fn encode<V: Serialize>(value: &V, subject: &ErrorSubject<NodeId>) -> StoreResult<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| io_error(subject.clone(), ErrorVerb::Write, e))
}

/// Decodes a stored value; a value that does not decode is reported as corruption of the
/// database, naming `what`.
fn decode<V: DeserializeOwned>(
    bytes: &[u8],
    what: impl FnOnce() -> String,
) -> Result<V, redb::Error> {
    serde_json::from_slice(bytes)
        .map_err(|e| redb::Error::Corrupted(format!("{} does not decode: {e}", what())))
}
