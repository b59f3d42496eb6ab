//! Replication (two copies of every pushed batch) and reader failover, on a real in-process
//! cluster.

mod common;

use std::collections::HashMap;
use std::path::Path;

use common::{data_files, read_records, write_records};
use sluice::local::{LocalCluster, LocalOptions};
use sluice::records::{self, RecordId};
use sluice_client::{ClientConfig, ClientError, SluiceClient};
use sluice_protocol::ShuffleKey;

fn client(cluster: &LocalCluster, replication: u32) -> SluiceClient {
    SluiceClient::new(ClientConfig {
        replication,
        ..ClientConfig::new(cluster.master_addr.clone())
    })
    .unwrap()
}

/// Writes `maps` maps of 600 records over `partitions` and returns every record id.
async fn write(
    client: &SluiceClient,
    key: &ShuffleKey,
    maps: u32,
    partitions: u32,
) -> Vec<RecordId> {
    write_records(client, key, (maps, partitions), 600, 900).await
}

async fn read(
    client: &SluiceClient,
    key: &ShuffleKey,
    partitions: u32,
) -> Result<HashMap<RecordId, usize>, ClientError> {
    read_records(client, key, 0..partitions, None).await
}

fn assert_exactly_once(seen: &HashMap<RecordId, usize>, ids: &[RecordId]) {
    assert_eq!(seen.len(), ids.len(), "distinct records read");
    for id in ids {
        assert_eq!(seen.get(id), Some(&1), "record {id:?}");
    }
}

/// Data files under `dir` whose name ends in `-<role>.data` (`p` or `r`).
fn files(dir: &Path, role: char) -> usize {
    data_files(dir)
        .iter()
        .filter(|p| p.to_string_lossy().ends_with(&format!("-{role}.data")))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_partition_has_two_copies_on_different_workers() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = LocalCluster::start(LocalOptions::new(3, dir.path()))
        .await
        .unwrap();
    let client = client(&cluster, 2);
    let key = ShuffleKey::new("two-copies", 0);
    let handle = client.register_shuffle(&key, 2, 30).await.unwrap();
    for (p, (primary, replica)) in handle
        .locations
        .primary_worker
        .iter()
        .zip(&handle.locations.replica_worker)
        .enumerate()
    {
        assert!(
            (*replica as usize) < handle.locations.workers.len(),
            "partition {p} has no replica"
        );
        assert_ne!(primary, replica, "partition {p}: both copies on one worker");
    }
    let ids = write(&client, &key, 2, 30).await;
    assert_exactly_once(&read(&client, &key, 30).await.unwrap(), &ids);
    let primaries: usize = (0..3).map(|w| files(&cluster.data_dir(w), 'p')).sum();
    let replicas: usize = (0..3).map(|w| files(&cluster.data_dir(w), 'r')).sum();
    assert_eq!((primaries, replicas), (30, 30));
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_fail_over_to_replicas_when_a_worker_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = LocalCluster::start(LocalOptions::new(3, dir.path()))
        .await
        .unwrap();
    let client = client(&cluster, 2);
    let key = ShuffleKey::new("failover", 0);
    let ids = write(&client, &key, 3, 24).await;
    // Wait for the commit, then lose a worker holding a third of the primaries.
    assert_exactly_once(&read(&client, &key, 24).await.unwrap(), &ids);
    cluster.stop_worker(1).await.unwrap();
    assert_exactly_once(&read(&client, &key, 24).await.unwrap(), &ids);
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_replication_a_lost_worker_is_an_error_never_short_data() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = LocalCluster::start(LocalOptions::new(2, dir.path()))
        .await
        .unwrap();
    let client = client(&cluster, 1);
    let key = ShuffleKey::new("no-replica", 0);
    let ids = write(&client, &key, 2, 10).await;
    assert_exactly_once(&read(&client, &key, 10).await.unwrap(), &ids);
    cluster.stop_worker(0).await.unwrap();
    let error = read(&client, &key, 10).await.unwrap_err();
    assert!(error.is_data_loss(), "{error}");
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_two_needs_two_workers() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = LocalCluster::start(LocalOptions::new(1, dir.path()))
        .await
        .unwrap();
    let error = client(&cluster, 2)
        .register_shuffle(&ShuffleKey::new("alone", 0), 1, 4)
        .await
        .unwrap_err();
    assert!(error.to_string().contains("replication 2"), "{error}");
    let error = client(&cluster, 3)
        .register_shuffle(&ShuffleKey::new("three", 0), 1, 4)
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("replication must be 1 or 2"),
        "{error}"
    );
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_lost_in_the_middle_of_a_read_is_read_around() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = LocalOptions::new(3, dir.path());
    // Many small chunks per partition: the reader is part-way through a copy when it dies.
    options.worker.chunk_size = bytesize::ByteSize::kib(8);
    let mut cluster = LocalCluster::start(options).await.unwrap();
    let client = SluiceClient::new(ClientConfig {
        replication: 2,
        batch_size: 4096,
        prefetch_chunks: 1,
        ..ClientConfig::new(cluster.master_addr.clone())
    })
    .unwrap();
    let key = ShuffleKey::new("mid-read", 0);
    let ids = write(&client, &key, 4, 12).await;
    let handle = client.register_shuffle(&key, 4, 12).await.unwrap();
    let primary = &handle.locations.workers[handle.locations.primary_worker[0] as usize].id;
    let victim = cluster
        .workers()
        .iter()
        .position(|w| &w.id == primary)
        .unwrap();

    let mut reader = client.reader(&key, 0..12, None).await.unwrap();
    let mut seen: HashMap<RecordId, usize> = HashMap::new();
    let count = |block: &[u8], seen: &mut HashMap<RecordId, usize>| {
        records::parse(block, true, |id, _, intact| {
            assert!(intact);
            *seen.entry(id).or_insert(0) += 1;
        })
        .unwrap()
    };
    // Partition 0 is being read from its primary; it dies.
    let first = reader.next().await.unwrap().unwrap();
    count(&first, &mut seen);
    cluster.stop_worker(victim).await.unwrap();
    while let Some(block) = reader.next().await.unwrap() {
        count(&block, &mut seen);
    }
    assert_exactly_once(&seen, &ids);
    cluster.shutdown().await.unwrap();
}

/// Writes map `map` of 600 records over `partitions` with an existing handle.
async fn write_one(
    client: &SluiceClient,
    handle: &std::sync::Arc<sluice_client::ShuffleHandle>,
    map: u32,
    partitions: u32,
) -> Vec<RecordId> {
    let mut writer = client.writer(handle.clone(), map, 0).unwrap();
    let mut record = Vec::new();
    for seq in 0..600u32 {
        record.clear();
        records::encode(&mut record, map, seq, 100);
        writer
            .write((seq * 7 + map) % partitions, &record)
            .await
            .unwrap();
    }
    writer.finish().await.unwrap();
    (0..600).map(|seq| RecordId { map, seq }).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_revive_around_a_worker_lost_while_maps_push() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = LocalCluster::start(LocalOptions::new(3, dir.path()))
        .await
        .unwrap();
    let client = client(&cluster, 2);
    let key = ShuffleKey::new("revive-replicated", 0);
    let handle = client.register_shuffle(&key, 4, 18).await.unwrap();
    let mut ids = write_one(&client, &handle, 0, 18).await;
    // The master has not noticed yet: the writers find out on their own and revive.
    cluster.stop_worker(2).await.unwrap();
    for map in 1..4 {
        ids.extend(write_one(&client, &handle, map, 18).await);
    }
    assert_exactly_once(&read(&client, &key, 18).await.unwrap(), &ids);
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_replication_a_revive_keeps_new_data_and_reports_what_was_lost() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = LocalCluster::start(LocalOptions::new(2, dir.path()))
        .await
        .unwrap();
    let client = client(&cluster, 1);

    // Lost before anything was pushed: the revived partitions hold everything.
    let key = ShuffleKey::new("revive-early", 0);
    let handle = client.register_shuffle(&key, 2, 8).await.unwrap();
    cluster.stop_worker(0).await.unwrap();
    let mut ids = write_one(&client, &handle, 0, 8).await;
    ids.extend(write_one(&client, &handle, 1, 8).await);
    assert_exactly_once(&read(&client, &key, 8).await.unwrap(), &ids);
    cluster.shutdown().await.unwrap();

    // Lost after map 0 pushed to it: map 1 revives and completes, but map 0's acked batches on
    // the lost worker are gone, and the reader says so instead of returning short data.
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = LocalCluster::start(LocalOptions::new(2, dir.path()))
        .await
        .unwrap();
    let client = self::client(&cluster, 1);
    let key = ShuffleKey::new("revive-late", 0);
    let handle = client.register_shuffle(&key, 2, 8).await.unwrap();
    write_one(&client, &handle, 0, 8).await;
    cluster.stop_worker(0).await.unwrap();
    write_one(&client, &handle, 1, 8).await;
    let error = read(&client, &key, 8).await.unwrap_err();
    assert!(error.is_data_loss(), "{error}");
    assert!(error.to_string().contains("no committed copy"), "{error}");
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_worker_serves_its_committed_files_again() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = LocalCluster::start(LocalOptions::new(2, dir.path()))
        .await
        .unwrap();
    // Without replication, every partition on worker 0 exists only there.
    let client = client(&cluster, 1);
    let key = ShuffleKey::new("restart", 0);
    let ids = write(&client, &key, 3, 12).await;
    assert_exactly_once(&read(&client, &key, 12).await.unwrap(), &ids);
    let before = cluster.workers()[0].clone();
    cluster.restart_worker(0).await.unwrap();
    let after = cluster.workers()[0].clone();
    assert_eq!(before.id, after.id);
    assert_ne!(
        before.fetch_port, after.fetch_port,
        "the restarted worker has new ports"
    );
    assert_exactly_once(&read(&client, &key, 12).await.unwrap(), &ids);
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_copy_is_read_around_through_the_other_copy() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = LocalCluster::start(LocalOptions::new(2, dir.path()))
        .await
        .unwrap();
    let client = client(&cluster, 2);
    let key = ShuffleKey::new("corrupt-copy", 0);
    let ids = write(&client, &key, 2, 4).await;
    assert_exactly_once(&read(&client, &key, 4).await.unwrap(), &ids);
    // Flip a byte in the middle of every primary copy's file.
    let mut corrupted = 0;
    for path in (0..2).flat_map(|w| data_files(&cluster.data_dir(w))) {
        if path.to_string_lossy().ends_with("-p.data") {
            let mut bytes = std::fs::read(&path).unwrap();
            let middle = bytes.len() / 2;
            bytes[middle] ^= 0x10;
            std::fs::write(&path, bytes).unwrap();
            corrupted += 1;
        }
    }
    assert_eq!(corrupted, 4);
    assert_exactly_once(&read(&client, &key, 4).await.unwrap(), &ids);
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_past_its_size_cap_moves_to_new_epochs() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = LocalOptions::new(3, dir.path());
    options.worker.partition_size_cap = bytesize::ByteSize::kib(64);
    let cluster = LocalCluster::start(options).await.unwrap();
    let client = SluiceClient::new(ClientConfig {
        replication: 2,
        batch_size: 8 * 1024,
        push_size: 16 * 1024,
        ..ClientConfig::new(cluster.master_addr.clone())
    })
    .unwrap();
    let key = ShuffleKey::new("size-cap", 0);
    let handle = client.register_shuffle(&key, 2, 2).await.unwrap();
    let mut ids = Vec::new();
    // About 600 KiB per partition: ten times the cap.
    for map in 0..2 {
        let mut writer = client.writer(handle.clone(), map, 0).unwrap();
        let mut record = Vec::new();
        for seq in 0..1200u32 {
            record.clear();
            records::encode(&mut record, map, seq, 500);
            writer.write(seq % 2, &record).await.unwrap();
            ids.push(RecordId { map, seq });
        }
        writer.finish().await.unwrap();
    }
    assert!(
        handle.route(0).epoch >= 5,
        "partition 0 is at epoch {}",
        handle.route(0).epoch
    );
    assert_exactly_once(&read(&client, &key, 2).await.unwrap(), &ids);
    cluster.shutdown().await.unwrap();
}

/// Waits until `count` non-empty data files exist under `dir` (buffers flushed).
async fn wait_flushed(dir: &Path, count: usize) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let flushed = data_files(dir)
            .iter()
            .filter(|p| std::fs::metadata(p).is_ok_and(|m| m.len() > 0))
            .count();
        if flushed >= count {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{flushed} of {count} locations flushed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_restarted_before_commit_serve_what_they_flushed() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = LocalOptions::new(2, dir.path());
    options.worker.max_buffer_age = std::time::Duration::from_millis(100);
    let mut cluster = LocalCluster::start(options).await.unwrap();
    let client = client(&cluster, 2);
    let key = ShuffleKey::new("restart-mid-stage", 0);
    let (maps, partitions) = (4, 8);
    let handle = client
        .register_shuffle(&key, maps, partitions)
        .await
        .unwrap();
    let mut ids = Vec::new();
    for map in 0..maps - 1 {
        ids.extend(write_one(&client, &handle, map, partitions).await);
    }
    // Every acked byte of the first maps is flushed; then every worker restarts in turn (a
    // rolling restart of the StatefulSet), both copies of each epoch included.
    wait_flushed(dir.path(), 2 * partitions as usize).await;
    cluster.restart_worker(0).await.unwrap();
    cluster.restart_worker(1).await.unwrap();
    // The last map's writer finds the recovered locations closed and revives.
    ids.extend(write_one(&client, &handle, maps - 1, partitions).await);
    assert_exactly_once(&read(&client, &key, partitions).await.unwrap(), &ids);
    cluster.shutdown().await.unwrap();
}
