//! The DFS tier: committed locations kept in an object store or a distributed file system
//! (S3 or any S3-compatible server, HDFS, or a shared file system), through Apache OpenDAL.
//!
//! Objects are named like local files, under the configured prefix:
//! `<prefix>/<app>/<shuffle>/<partition>-<epoch>-<p|r>.data` and `.index` beside it. The data
//! object holds the location's batches exactly as its data file does (batch heads, CRCs), the
//! index object its whole batch index, so reads, map-range reads and their checks work the same.
//! Data goes up as a multipart upload of [`PART`]-byte parts, read sequentially from the local
//! file. Both sides derive names from the shuffle and location, so no request names a path.
//!
//! A worker that holds a location on the DFS serves it like a local one: the index is kept in
//! memory, and chunks are read with ranged reads of the data object.
//!
//! Every request is retried with backoff ([`RETRY`]), so a DFS that is down for a few seconds
//! costs time, not data. A request that still fails marks the DFS down for [`DOWN_FOR`]: new
//! locations then go to the local disks even below their reserve, and the locations whose
//! writes failed answer pushes with a failure, so writers revive elsewhere at once.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use opendal::Operator;
use sluice_protocol::ShuffleKey;

use super::layout::LocationId;
use super::partition::CommittedFiles;

/// Size of one part of a multipart upload (above S3's 5 MiB minimum).
pub const PART: usize = 8 << 20;

/// Largest piece a chunk is read from the DFS in.
pub const READ_PIECE: u64 = 4 << 20;

/// How long a DFS whose request failed after every retry counts as down.
pub const DOWN_FOR: Duration = Duration::from_secs(30);

/// Retries of a failed DFS request: 6, waiting 0.25 s doubling up to 5 s (about 13 s in all).
const RETRY: (usize, Duration, Duration) = (6, Duration::from_millis(250), Duration::from_secs(5));

/// The configured DFS.
#[derive(Debug)]
pub struct Dfs {
    /// Retries failed requests ([`RETRY`]).
    operator: Operator,
    /// Tries each request once: for a drain, which has a deadline and a peer to fall back on.
    once: Operator,
    /// What the config named, for logs (no credentials).
    url: String,
    /// Until when it counts as down (a request failed after every retry).
    down_until: Mutex<Option<Instant>>,
    /// The worker's counters of retried and failed requests, once set.
    counters: Arc<OnceLock<Counters>>,
    /// The size a location's writer buffers before it sends a part (S3: [`PART`], as parts
    /// but the last must be at least 5 MiB); `None`: every flush goes out as it comes (HDFS,
    /// a file system).
    chunk: Option<usize>,
    /// Location writers running, and how many may run: the data a writer buffers (up to a
    /// part) is pushed data, held in the memory budget until the part is sent, so writers
    /// that buffer may hold half the budget at most.
    writers: Arc<std::sync::atomic::AtomicUsize>,
    max_writers: std::sync::atomic::AtomicUsize,
    /// The worker's memory budget, once set: what a writer buffers is copied under a lease of
    /// its own, so the small slices it keeps do not pin whole pushed frames.
    memory: OnceLock<Arc<crate::memory::MemoryBudget>>,
}

/// One running location writer, counted in [`Dfs::writers`] while it lives.
struct WriterSlot(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for WriterSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Counters of retried requests and of requests that failed after every retry.
#[derive(Debug)]
struct Counters {
    retries: metrics::Counter,
    failures: metrics::Counter,
}

/// Counts and logs each retried DFS request.
struct RetryLog(Arc<OnceLock<Counters>>);

impl opendal::layers::RetryInterceptor for RetryLog {
    fn intercept(&self, err: &opendal::Error, dur: Duration) {
        if let Some(counters) = self.0.get() {
            counters.retries.increment(1);
        }
        tracing::warn!(error = %err, retry_in = ?dur, "a DFS request failed; retrying");
    }
}

/// A committed location kept on the DFS.
#[derive(Debug, Clone)]
pub struct DfsObject {
    pub dfs: Arc<Dfs>,
    /// The data object's path.
    pub data: String,
}

impl DfsObject {
    /// The data object of location `id` of `shuffle` on `dfs`.
    pub fn new(dfs: &Arc<Dfs>, shuffle: &ShuffleKey, id: LocationId) -> DfsObject {
        DfsObject {
            dfs: dfs.clone(),
            data: object_paths(shuffle, id).0,
        }
    }

    /// Reads `len` bytes of the data object from `offset`.
    pub async fn read(&self, offset: u64, len: u64) -> std::io::Result<Bytes> {
        let end = offset
            .checked_add(len)
            .ok_or_else(|| std::io::Error::other("range overflows"))?;
        let buffer = self
            .dfs
            .operator
            .read_with(&self.data)
            .range(offset..end)
            .await
            .map_err(io_error)?;
        let bytes = buffer.to_bytes();
        if bytes.len() as u64 != len {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "{} gave {} bytes of a range of {len}",
                    self.data,
                    bytes.len()
                ),
            ));
        }
        Ok(bytes)
    }
}

/// Checks the whole index of a location on the DFS against its totals: `batches` entries,
/// inside the data and covering all of its `data_len` bytes.
pub fn check_index(index: &[u8], data_len: u64, batches: u64) -> Result<(), String> {
    let entries = super::index::decode(index, data_len)?;
    let listed: u64 = entries.iter().map(|e| u64::from(e.length)).sum();
    if entries.len() as u64 != batches || listed != data_len {
        return Err(format!(
            "its index lists {} batches of {listed} bytes, not {batches} of {data_len}",
            entries.len()
        ));
    }
    Ok(())
}

fn io_error(e: opendal::Error) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

/// The object paths of a location's data and index.
pub fn object_paths(shuffle: &ShuffleKey, id: LocationId) -> (String, String) {
    let stem = format!("{}/{}/{}", shuffle.app_id, shuffle.shuffle_id, id.stem());
    (format!("{stem}.data"), format!("{stem}.index"))
}

impl Dfs {
    /// The DFS named by `url`: `s3://bucket/prefix` (credentials from `AWS_ACCESS_KEY_ID` and
    /// `AWS_SECRET_ACCESS_KEY`; `endpoint` for an S3-compatible server, `region`),
    /// `hdfs://namenode:port/prefix` (hdfs-native, no JVM), or `fs:///absolute/path` (a mounted
    /// shared file system). Touches nothing yet.
    pub fn open(url: &str, endpoint: &str, region: &str) -> Result<Dfs, String> {
        // S3 takes parts of at least 5 MiB (but the last): its writers buffer a part.
        let mut chunk = None;
        let operator = if let Some(rest) = url.strip_prefix("s3://") {
            chunk = Some(PART);
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(format!("{url:?} names no bucket (s3://bucket/prefix)"));
            }
            let mut builder = opendal::services::S3::default()
                .bucket(bucket)
                .root(&format!("/{prefix}"))
                .region(region);
            if !endpoint.is_empty() {
                builder = builder.endpoint(endpoint);
            }
            if let (Ok(key), Ok(secret)) = (
                std::env::var("AWS_ACCESS_KEY_ID"),
                std::env::var("AWS_SECRET_ACCESS_KEY"),
            ) {
                builder = builder.access_key_id(&key).secret_access_key(&secret);
            }
            Operator::new(builder).map_err(|e| e.to_string())?.finish()
        } else if let Some(rest) = url.strip_prefix("hdfs://") {
            let (authority, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if authority.is_empty() {
                return Err(format!(
                    "{url:?} names no name node (hdfs://host:port/prefix)"
                ));
            }
            let builder = opendal::services::HdfsNative::default()
                .name_node(&format!("hdfs://{authority}"))
                .root(&format!("/{prefix}"));
            Operator::new(builder).map_err(|e| e.to_string())?.finish()
        } else if let Some(root) = url.strip_prefix("fs://") {
            if !root.starts_with('/') {
                return Err(format!("{url:?}: the path must be absolute (fs:///path)"));
            }
            let builder = opendal::services::Fs::default().root(root);
            Operator::new(builder).map_err(|e| e.to_string())?.finish()
        } else {
            return Err(format!(
                "{url:?}: a DFS is s3://bucket/prefix, hdfs://host:port/prefix or fs:///path"
            ));
        };
        // The timeout inside the retry: a request that hangs is retried like one that failed.
        let (times, min, max) = RETRY;
        let counters = Arc::new(OnceLock::new());
        let once = operator.clone().layer(opendal::layers::TimeoutLayer::new());
        let operator = operator.layer(opendal::layers::TimeoutLayer::new()).layer(
            opendal::layers::RetryLayer::new()
                .with_max_times(times)
                .with_min_delay(min)
                .with_max_delay(max)
                .with_jitter()
                .with_notify(RetryLog(counters.clone())),
        );
        Ok(Dfs {
            operator,
            once,
            url: url.to_string(),
            down_until: Mutex::new(None),
            counters,
            chunk,
            writers: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            max_writers: std::sync::atomic::AtomicUsize::new(usize::MAX),
            memory: OnceLock::new(),
        })
    }

    /// Accounts what location writers buffer in `memory`, and sizes their number to it:
    /// writers that buffer parts may hold half of it.
    pub fn set_memory(&self, memory: Arc<crate::memory::MemoryBudget>) {
        if let Some(chunk) = self.chunk {
            let max = (memory.budget() / 2 / chunk as u64).max(1);
            self.max_writers.store(
                usize::try_from(max).unwrap_or(usize::MAX),
                std::sync::atomic::Ordering::Relaxed,
            );
        }
        let _ = self.memory.set(memory);
    }

    /// `bufs` as what a writer may keep: as they are when writes go out as they come, else
    /// copied into one allocation under a lease of its own.
    fn to_buffer(&self, bufs: Vec<Bytes>) -> Vec<Bytes> {
        if self.chunk.is_none() || self.memory.get().is_none() || bufs.is_empty() {
            return bufs;
        }
        let mut copy = Vec::with_capacity(bufs.iter().map(Bytes::len).sum());
        for buf in &bufs {
            copy.extend_from_slice(buf);
        }
        vec![self.leased(copy)]
    }

    /// `bytes` under a lease of the memory budget when writers buffer what they are given
    /// (and the budget is set).
    fn leased(&self, bytes: Vec<u8>) -> Bytes {
        match (self.chunk, self.memory.get()) {
            (Some(_), Some(memory)) => {
                let lease = memory.lease_now(bytes.len() as u64);
                crate::memory::leased_bytes(bytes, lease)
            }
            _ => Bytes::from(bytes),
        }
    }

    /// Whether another location may be written to the DFS: it is up, and the writers running
    /// leave room for one more.
    pub fn takes_writers(&self) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        self.is_up() && self.writers.load(Relaxed) < self.max_writers.load(Relaxed)
    }

    /// Counts retried requests in `retries` and requests that failed after every retry in
    /// `failures` (set once).
    pub fn count_with(&self, retries: metrics::Counter, failures: metrics::Counter) {
        let _ = self.counters.set(Counters { retries, failures });
    }

    /// Whether the DFS takes new locations: no request failed after every retry in the last
    /// [`DOWN_FOR`].
    pub fn is_up(&self) -> bool {
        let down = self.down_until.lock().unwrap_or_else(|e| e.into_inner());
        down.is_none_or(|until| Instant::now() >= until)
    }

    /// Records that a request failed after every retry: the DFS counts as down for
    /// [`DOWN_FOR`].
    pub fn failed(&self, error: &dyn std::fmt::Display) {
        if let Some(counters) = self.counters.get() {
            counters.failures.increment(1);
        }
        let was_up = self.is_up();
        *self.down_until.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(Instant::now() + DOWN_FOR);
        if was_up {
            tracing::error!(dfs = %self.url, error = %error, down_for = ?DOWN_FOR, "the DFS is down: new locations go to local disks");
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The OpenDAL operator (for tests that look at what is stored).
    pub fn operator(&self) -> &Operator {
        &self.operator
    }

    /// Uploads a committed location: its data file as a multipart upload of [`PART`]-byte
    /// parts, then its whole index. Returns the bytes uploaded. Requests are retried unless
    /// `once`; a failure marks the DFS down.
    pub async fn upload(
        &self,
        shuffle: &ShuffleKey,
        id: LocationId,
        committed: &CommittedFiles,
        once: bool,
    ) -> std::io::Result<u64> {
        let operator = if once { &self.once } else { &self.operator };
        let uploaded = Self::upload_files(operator, shuffle, id, committed).await;
        if let Err(e) = &uploaded {
            self.failed(e);
        }
        uploaded
    }

    async fn upload_files(
        operator: &Operator,
        shuffle: &ShuffleKey,
        id: LocationId,
        committed: &CommittedFiles,
    ) -> std::io::Result<u64> {
        let (data_path, index_path) = object_paths(shuffle, id);
        let mut writer = operator
            .writer_with(&data_path)
            .chunk(PART)
            .await
            .map_err(io_error)?;
        let mut offset = 0u64;
        if let Some(files) = &committed.files {
            write_file(&mut writer, &files.data, committed.data_len, Bytes::from).await?;
            offset = committed.data_len;
        }
        writer.close().await.map_err(io_error)?;
        let index = match (&committed.index, &committed.files) {
            (Some(index), _) => index.clone(),
            (None, Some(files)) => {
                let path = files.index.clone();
                Bytes::from(
                    tokio::task::spawn_blocking(move || std::fs::read(path))
                        .await
                        .map_err(std::io::Error::other)??,
                )
            }
            (None, None) => Bytes::new(),
        };
        let index_len = index.len() as u64;
        operator.write(&index_path, index).await.map_err(io_error)?;
        Ok(offset + index_len)
    }

    /// The data object of a location and its whole index, checked: the data object is
    /// `data_len` bytes long and the index object `index_len`.
    pub async fn locate(
        self: &Arc<Self>,
        shuffle: &ShuffleKey,
        id: LocationId,
        data_len: u64,
        index_len: u64,
    ) -> std::io::Result<(DfsObject, Bytes)> {
        let (data_path, index_path) = object_paths(shuffle, id);
        let stored = self
            .operator
            .stat(&data_path)
            .await
            .map_err(io_error)?
            .content_length();
        if stored != data_len {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{data_path} holds {stored} bytes, not {data_len}"),
            ));
        }
        let index = self
            .operator
            .read(&index_path)
            .await
            .map_err(io_error)?
            .to_bytes();
        if index.len() as u64 != index_len {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{index_path} holds {} bytes, not {index_len}", index.len()),
            ));
        }
        let object = DfsObject {
            dfs: self.clone(),
            data: data_path,
        };
        Ok((object, index))
    }

    /// Deletes the objects of one shuffle (`Some`) or of a whole application.
    pub async fn remove(&self, app_id: &str, shuffle_id: Option<u32>) -> std::io::Result<()> {
        let dir = match shuffle_id {
            Some(id) => format!("{app_id}/{id}/"),
            None => format!("{app_id}/"),
        };
        self.operator.remove_all(&dir).await.map_err(io_error)
    }
}

impl super::Store {
    /// Moves committed locations of `disk` to the DFS, largest first, until about `wanted` bytes
    /// are moved or none is left: each is uploaded, served from the DFS from then on (as a
    /// location a draining peer handed over), and its local files are deleted. Returns the
    /// bytes freed. Nothing happens without a DFS.
    pub async fn offload(&self, disk: &Arc<super::disk::Disk>, wanted: u64) -> u64 {
        let Some(dfs) = self.dfs().filter(|dfs| dfs.is_up()).cloned() else {
            return 0;
        };
        let mut candidates: Vec<(
            ShuffleKey,
            LocationId,
            Arc<super::partition::Partition>,
            u64,
        )> = Vec::new();
        for (shuffle, locations) in self.lock().iter() {
            for (id, partition) in locations {
                if !Arc::ptr_eq(partition.disk(), disk) {
                    continue;
                }
                if let Ok(files) = partition.committed_files() {
                    if files.dfs.is_none() && files.files.is_some() {
                        candidates.push((shuffle.clone(), *id, partition.clone(), files.data_len));
                    }
                }
            }
        }
        candidates.sort_by_key(|c| std::cmp::Reverse(c.3));
        let mut freed = 0u64;
        for (shuffle, id, partition, _) in candidates {
            if freed >= wanted {
                break;
            }
            let (Ok(files), Ok(super::partition::Sealed::Committed(stats))) =
                (partition.committed_files(), partition.seal().await)
            else {
                continue;
            };
            let Some(local) = files.files.clone() else {
                continue;
            };
            let moved = async {
                dfs.upload(&shuffle, id, &files, false).await?;
                self.hand_in_dfs(&shuffle, id, files.data_len, stats)
                    .await
                    .map_err(std::io::Error::other)
            };
            if let Err(e) = moved.await {
                tracing::warn!(dfs = dfs.url(), location = %partition.name(), error = %e, "moving a location to the DFS failed");
                continue;
            }
            // Served from the DFS now; a read that had the file open finishes on it.
            let removed = tokio::task::spawn_blocking(move || {
                let _ = std::fs::remove_file(&local.index);
                std::fs::remove_file(&local.data)
            })
            .await;
            if !matches!(removed, Ok(Ok(()))) {
                tracing::warn!(location = %partition.name(), "a location moved to the DFS kept its local file");
            }
            freed += files.data_len;
            tracing::info!(location = %partition.name(), bytes = files.data_len, dfs = dfs.url(), "location moved to the DFS");
        }
        freed
    }
}

/// What a location written straight to the DFS asks of its writer task.
pub enum WriteJob {
    /// First of all (a local location moving to the DFS as it outgrew `dfs_location_size`):
    /// upload what its local files hold, `data_len` bytes of data and `index_len` of index (in
    /// memory when `index` is `None`, else in that file), as the start of the object.
    Prefix {
        data: std::path::PathBuf,
        data_len: u64,
        index: Option<std::path::PathBuf>,
        index_len: u64,
        done: tokio::sync::oneshot::Sender<std::io::Result<()>>,
    },
    /// Append these slices (one flush), in order.
    Write(
        Vec<Bytes>,
        tokio::sync::oneshot::Sender<std::io::Result<()>>,
    ),
    /// Complete the upload, then write the whole index (the prefix's entries, then these) as
    /// the index object. Answers the whole index.
    Close(Bytes, tokio::sync::oneshot::Sender<std::io::Result<Bytes>>),
}

/// The writer of a location placed on the DFS (its worker's disks were below `disk_reserve`,
/// or it outgrew `dfs_location_size`): one task per location owns the multipart upload and
/// takes its flushes in order. Dropping the sender ends the task; an upload never closed is
/// abandoned. A failure fails every later job, and marks the DFS down.
pub fn spawn_writer(
    dfs: Arc<Dfs>,
    shuffle: &ShuffleKey,
    id: LocationId,
) -> tokio::sync::mpsc::UnboundedSender<WriteJob> {
    let (data_path, index_path) = object_paths(shuffle, id);
    let (jobs, mut queue) = tokio::sync::mpsc::unbounded_channel::<WriteJob>();
    dfs.writers
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let slot = WriterSlot(dfs.writers.clone());
    tokio::spawn(async move {
        // Given back, with the upload's buffered data, when a write fails.
        let mut slot = Some(slot);
        let mut writer: Option<opendal::Writer> = None;
        let mut failed: Option<String> = None;
        // The index entries of a local prefix.
        let mut prefix_index = Vec::new();
        let fail = |e: &std::io::Error, failed: &mut Option<String>| {
            if failed.is_none() {
                dfs.failed(e);
                *failed = Some(e.to_string());
            }
        };
        while let Some(job) = queue.recv().await {
            match job {
                WriteJob::Prefix {
                    data,
                    data_len,
                    index,
                    index_len,
                    done,
                } => {
                    let result = match &failed {
                        Some(reason) => Err(std::io::Error::other(reason.clone())),
                        None => copy_prefix(
                            &dfs,
                            &data_path,
                            &mut writer,
                            data,
                            data_len,
                            index,
                            index_len,
                        )
                        .await
                        .map(|index| prefix_index = index),
                    };
                    if let Err(e) = &result {
                        fail(e, &mut failed);
                        (writer, slot) = (None, None);
                    }
                    let _ = done.send(result);
                }
                WriteJob::Write(bufs, done) => {
                    let result = match &failed {
                        Some(reason) => Err(std::io::Error::other(reason.clone())),
                        None => write_all(&dfs, &data_path, &mut writer, bufs).await,
                    };
                    if let Err(e) = &result {
                        fail(e, &mut failed);
                        (writer, slot) = (None, None);
                    }
                    let _ = done.send(result);
                }
                WriteJob::Close(entries, done) => {
                    let mut index = std::mem::take(&mut prefix_index);
                    index.extend_from_slice(&entries);
                    let index = Bytes::from(index);
                    let result = match (&failed, writer.take()) {
                        (Some(reason), _) => Err(std::io::Error::other(reason.clone())),
                        (None, Some(mut open)) => match open.close().await {
                            Ok(_) => dfs
                                .operator
                                .write(&index_path, index.clone())
                                .await
                                .map(|_| index),
                            Err(e) => Err(e),
                        }
                        .map_err(io_error),
                        // Nothing was ever written: an empty location, no objects.
                        (None, None) => Ok(index),
                    };
                    if let Err(e) = &result {
                        fail(e, &mut failed);
                    }
                    drop(slot);
                    let _ = done.send(result);
                    return;
                }
            }
        }
    });
    jobs
}

/// Uploads the first `data_len` bytes of the local file `data` as the start of the object, and
/// returns the first `index_len` bytes of the local index file `index` (empty without one).
async fn copy_prefix(
    dfs: &Dfs,
    path: &str,
    writer: &mut Option<opendal::Writer>,
    data: std::path::PathBuf,
    data_len: u64,
    index: Option<std::path::PathBuf>,
    index_len: u64,
) -> std::io::Result<Vec<u8>> {
    // Each piece is read into memory of its own: leased as it is, not copied again.
    let open = open_writer(dfs, path, writer).await?;
    write_file(open, &data, data_len, |piece| dfs.leased(piece)).await?;
    match index {
        Some(index) => read_at(Arc::new(std::fs::File::open(index)?), 0, index_len as usize).await,
        None => Ok(Vec::new()),
    }
}

/// Reads `len` bytes of `file` at `offset`, off the runtime's threads.
async fn read_at(file: Arc<std::fs::File>, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
    tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    })
    .await
    .map_err(std::io::Error::other)?
}

/// Writes the first `len` bytes of the local file `path` to `writer` in [`PART`]-byte pieces,
/// each as `piece` makes it.
async fn write_file(
    writer: &mut opendal::Writer,
    path: &std::path::Path,
    len: u64,
    piece: impl Fn(Vec<u8>) -> Bytes,
) -> std::io::Result<()> {
    let file = Arc::new(std::fs::File::open(path)?);
    let mut offset = 0u64;
    while offset < len {
        let n = (len - offset).min(PART as u64) as usize;
        let read = read_at(file.clone(), offset, n).await?;
        writer.write(piece(read)).await.map_err(io_error)?;
        offset += n as u64;
    }
    Ok(())
}

/// The location's writer, opened on first use.
async fn open_writer<'w>(
    dfs: &Dfs,
    path: &str,
    writer: &'w mut Option<opendal::Writer>,
) -> std::io::Result<&'w mut opendal::Writer> {
    if writer.is_none() {
        let mut open = dfs.operator.writer_with(path);
        if let Some(chunk) = dfs.chunk {
            open = open.chunk(chunk);
        }
        *writer = Some(open.await.map_err(io_error)?);
    }
    writer
        .as_mut()
        .ok_or_else(|| std::io::Error::other("no writer"))
}

async fn write_all(
    dfs: &Dfs,
    path: &str,
    writer: &mut Option<opendal::Writer>,
    bufs: Vec<Bytes>,
) -> std::io::Result<()> {
    let open = open_writer(dfs, path, writer).await?;
    for buf in dfs.to_buffer(bufs) {
        open.write(buf).await.map_err(io_error)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wait_for(what: &str, check: impl Fn() -> bool) -> impl std::future::Future<Output = ()> {
        let what = what.to_string();
        async move {
            for _ in 0..200 {
                if check() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("{what}");
        }
    }

    #[tokio::test]
    async fn writers_that_buffer_parts_may_hold_half_the_memory_budget() {
        // Nothing is sent: no server is needed to open and count writers.
        let s3 =
            Arc::new(Dfs::open("s3://bucket/prefix", "http://127.0.0.1:9", "us-east-1").unwrap());
        let memory = Arc::new(crate::memory::MemoryBudget::new(4 * PART as u64));
        s3.set_memory(memory.clone());
        let shuffle = ShuffleKey::new("app", 0);
        let id = |partition| LocationId {
            partition,
            epoch: 0,
            role: sluice_protocol::pb::Role::Primary,
        };
        let first = spawn_writer(s3.clone(), &shuffle, id(0));
        assert!(s3.takes_writers());
        let second = spawn_writer(s3.clone(), &shuffle, id(1));
        assert!(
            !s3.takes_writers(),
            "two writers of 8 MiB parts fill half of 32 MiB"
        );
        drop(first);
        wait_for("a writer that ended gives its place back", || {
            s3.takes_writers()
        })
        .await;
        drop(second);

        // A writer whose writes go out as they come holds nothing: no limit.
        let dir = tempfile::tempdir().unwrap();
        let fs = Arc::new(Dfs::open(&format!("fs://{}", dir.path().display()), "", "").unwrap());
        fs.set_memory(memory);
        let writers: Vec<_> = (0..8)
            .map(|p| spawn_writer(fs.clone(), &shuffle, id(p)))
            .collect();
        assert!(fs.takes_writers());
        drop(writers);
    }

    #[tokio::test]
    async fn a_failed_request_marks_the_dfs_down_for_a_while() {
        let dfs = Dfs::open("s3://bucket/prefix", "http://127.0.0.1:9", "us-east-1").unwrap();
        assert!(dfs.is_up() && dfs.takes_writers());
        dfs.failed(&"connection refused");
        assert!(!dfs.is_up() && !dfs.takes_writers());
        *dfs.down_until.lock().unwrap() = Some(Instant::now());
        assert!(dfs.is_up(), "up again once DOWN_FOR has passed");
    }
}
