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

use std::sync::Arc;

use bytes::Bytes;
use opendal::Operator;
use sluice_protocol::ShuffleKey;

use super::layout::LocationId;
use super::partition::CommittedFiles;

/// Size of one part of a multipart upload (above S3's 5 MiB minimum).
pub const PART: usize = 8 << 20;

/// Largest piece a chunk is read from the DFS in.
pub const READ_PIECE: u64 = 4 << 20;

/// The configured DFS.
#[derive(Debug)]
pub struct Dfs {
    operator: Operator,
    /// What the config named, for logs (no credentials).
    url: String,
}

/// A committed location kept on the DFS.
#[derive(Debug, Clone)]
pub struct DfsObject {
    pub dfs: Arc<Dfs>,
    /// The data object's path.
    pub data: String,
}

impl DfsObject {
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
        let operator = if let Some(rest) = url.strip_prefix("s3://") {
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
        Ok(Dfs {
            operator,
            url: url.to_string(),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The OpenDAL operator (for tests that look at what is stored).
    pub fn operator(&self) -> &Operator {
        &self.operator
    }

    /// Uploads a committed location: its data file as a multipart upload of [`PART`]-byte
    /// parts, then its whole index. Returns the bytes uploaded.
    pub async fn upload(
        &self,
        shuffle: &ShuffleKey,
        id: LocationId,
        committed: &CommittedFiles,
    ) -> std::io::Result<u64> {
        let (data_path, index_path) = object_paths(shuffle, id);
        let mut writer = self
            .operator
            .writer_with(&data_path)
            .chunk(PART)
            .await
            .map_err(io_error)?;
        let mut offset = 0u64;
        if let Some(files) = &committed.files {
            let file = Arc::new(std::fs::File::open(&files.data)?);
            while offset < committed.data_len {
                let len = (committed.data_len - offset).min(PART as u64) as usize;
                let file = file.clone();
                let piece = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
                    use std::os::unix::fs::FileExt;
                    let mut buf = vec![0u8; len];
                    file.read_exact_at(&mut buf, offset)?;
                    Ok(buf)
                })
                .await
                .map_err(std::io::Error::other)??;
                writer.write(piece).await.map_err(io_error)?;
                offset += len as u64;
            }
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
        self.operator
            .write(&index_path, index)
            .await
            .map_err(io_error)?;
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
        let Some(dfs) = self.dfs().cloned() else {
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
                dfs.upload(&shuffle, id, &files).await?;
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
    /// Append these slices (one flush), in order.
    Write(
        Vec<Bytes>,
        tokio::sync::oneshot::Sender<std::io::Result<()>>,
    ),
    /// Complete the upload, then write `index` as the index object.
    Close(Bytes, tokio::sync::oneshot::Sender<std::io::Result<()>>),
}

/// The writer of a location placed on the DFS (its worker's disks were below `disk_reserve`):
/// one task per location owns the multipart upload and takes its flushes in order. Dropping
/// the sender ends the task; an upload never closed is abandoned.
pub fn spawn_writer(
    dfs: Arc<Dfs>,
    shuffle: &ShuffleKey,
    id: LocationId,
) -> tokio::sync::mpsc::UnboundedSender<WriteJob> {
    let (data_path, index_path) = object_paths(shuffle, id);
    let (jobs, mut queue) = tokio::sync::mpsc::unbounded_channel::<WriteJob>();
    tokio::spawn(async move {
        let mut writer: Option<opendal::Writer> = None;
        let mut failed: Option<String> = None;
        while let Some(job) = queue.recv().await {
            match job {
                WriteJob::Write(bufs, done) => {
                    let result = match &failed {
                        Some(reason) => Err(std::io::Error::other(reason.clone())),
                        None => write_all(&dfs, &data_path, &mut writer, bufs).await,
                    };
                    if let Err(e) = &result {
                        failed.get_or_insert_with(|| e.to_string());
                    }
                    let _ = done.send(result);
                }
                WriteJob::Close(index, done) => {
                    let result = match (&failed, writer.take()) {
                        (Some(reason), _) => Err(std::io::Error::other(reason.clone())),
                        (None, Some(mut open)) => match open.close().await {
                            Ok(_) => dfs.operator.write(&index_path, index).await.map(|_| ()),
                            Err(e) => Err(e),
                        }
                        .map_err(io_error),
                        // Nothing was ever written: an empty location, no objects.
                        (None, None) => Ok(()),
                    };
                    let _ = done.send(result);
                    return;
                }
            }
        }
    });
    jobs
}

async fn write_all(
    dfs: &Dfs,
    path: &str,
    writer: &mut Option<opendal::Writer>,
    bufs: Vec<Bytes>,
) -> std::io::Result<()> {
    if writer.is_none() {
        let open = dfs
            .operator
            .writer_with(path)
            .chunk(PART)
            .await
            .map_err(io_error)?;
        *writer = Some(open);
    }
    let Some(open) = writer.as_mut() else {
        return Err(std::io::Error::other("no writer"));
    };
    for buf in bufs {
        open.write(buf).await.map_err(io_error)?;
    }
    Ok(())
}
