//! End-to-end shuffle correctness against a real in-process cluster (master and workers on
//! loopback, real disks): exactly-once reads, map attempts, map ranges, corruption detection,
//! backpressure, both write engines, deletion and worker loss.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::data_files;
use sluice::local::{LocalCluster, LocalOptions};
use sluice::records::{self, RecordId};
use sluice_client::{ClientError, ShuffleHandle, SluiceClient};
use sluice_protocol::ShuffleKey;
use sluice_worker::config::IoEngineConfig;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

async fn cluster(
    workers: usize,
    dir: &Path,
    tweak: impl FnOnce(&mut LocalOptions),
) -> LocalCluster {
    let mut options = LocalOptions::new(workers, dir);
    tweak(&mut options);
    LocalCluster::start(options).await.expect("cluster starts")
}

/// Writes `records` (partition, seq, size) for one map attempt and finishes it.
async fn write_map(
    client: &SluiceClient,
    handle: &Arc<ShuffleHandle>,
    map: u32,
    attempt: u32,
    records: &[(u32, u32, usize)],
) -> Result<sluice_client::MapOutput, ClientError> {
    let mut writer = client.writer(handle.clone(), map, attempt)?;
    let mut record = Vec::new();
    for &(partition, seq, size) in records {
        record.clear();
        records::encode(&mut record, map, seq, size);
        writer.write(partition, &record).await?;
    }
    writer.finish().await
}

/// Reads partitions `partitions` (and maps `maps`) and counts every record id.
async fn read_all(
    client: &SluiceClient,
    key: &ShuffleKey,
    partitions: std::ops::Range<u32>,
    maps: Option<std::ops::Range<u32>>,
) -> Result<HashMap<RecordId, usize>, ClientError> {
    let mut reader = client.reader(key, partitions, maps).await?;
    let mut seen = HashMap::new();
    while let Some(block) = reader.next().await? {
        records::parse(&block, true, |id, _, intact| {
            assert!(intact, "record {id:?} came back with different bytes");
            *seen.entry(id).or_insert(0) += 1;
        })
        .expect("blocks hold whole records");
    }
    Ok(seen)
}

fn assert_exactly(seen: &HashMap<RecordId, usize>, expected: impl IntoIterator<Item = RecordId>) {
    let mut missing = 0;
    let mut expected_count = 0;
    for id in expected {
        expected_count += 1;
        match seen.get(&id) {
            Some(1) => {}
            Some(n) => panic!("record {id:?} read {n} times"),
            None => missing += 1,
        }
    }
    assert_eq!(
        missing, 0,
        "{missing} of {expected_count} records were not read"
    );
    assert_eq!(
        seen.len(),
        expected_count,
        "records read that were never written (or by a losing attempt)"
    );
}

/// Records for one map: random sizes, partition 7 about 50x the others, every partition that
/// is a multiple of 10 left empty.
fn skewed_records(map: u32, count: u32, partitions: u32, hot: u32) -> Vec<(u32, u32, usize)> {
    let mut rng = Rng(u64::from(map) * 7919 + 1);
    let normal: Vec<u32> = (0..partitions)
        .filter(|p| p % 10 != 0 && *p != hot)
        .collect();
    (0..count)
        .map(|seq| {
            // The hot partition takes 50 shares; each normal partition one.
            let pick = rng.below(normal.len() as u64 + 50) as usize;
            let partition = if pick < normal.len() {
                normal[pick]
            } else {
                hot
            };
            let size = 12 + rng.below(1500) as usize;
            (partition, seq, size)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_is_read_exactly_once_with_skew_and_empty_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(3, dir.path(), |_| {}).await;
    let client = cluster.client().unwrap();
    let (maps, partitions, hot) = (16u32, 200u32, 7u32);
    let key = ShuffleKey::new("exactly-once", 0);
    let handle = client
        .register_shuffle(&key, maps, partitions)
        .await
        .unwrap();
    assert_eq!(
        handle.locations.workers.len(),
        3,
        "partitions spread over every worker"
    );

    let mut tasks = tokio::task::JoinSet::new();
    for map in 0..maps {
        let (client, handle) = (client.clone(), handle.clone());
        tasks.spawn(async move {
            let records = skewed_records(map, 1500, partitions, hot);
            let output = write_map(&client, &handle, map, 0, &records).await.unwrap();
            (map, records, output)
        });
    }
    let mut expected = Vec::new();
    let mut raw_per_partition = vec![0u64; partitions as usize];
    while let Some(done) = tasks.join_next().await {
        let (map, records, output) = done.unwrap();
        assert_eq!(output.winning_attempt, 0);
        for (p, bytes) in output.raw_bytes.iter().enumerate() {
            raw_per_partition[p] += bytes;
        }
        expected.extend(records.iter().map(|&(_, seq, _)| RecordId { map, seq }));
    }
    let normal: Vec<u64> = (0..partitions)
        .filter(|p| p % 10 != 0 && *p != hot)
        .map(|p| raw_per_partition[p as usize])
        .collect();
    let mean = normal.iter().sum::<u64>() / normal.len() as u64;
    let hot_ratio = raw_per_partition[hot as usize] as f64 / mean as f64;
    assert!(
        (35.0..70.0).contains(&hot_ratio),
        "hot partition is {hot_ratio:.1}x the mean"
    );
    assert!((0..partitions)
        .filter(|p| p % 10 == 0)
        .all(|p| raw_per_partition[p as usize] == 0));

    let seen = read_all(&client, &key, 0..partitions, None).await.unwrap();
    assert_exactly(&seen, expected.iter().copied());

    // Reading the hot partition and an empty one on their own works too.
    let hot_only = read_all(&client, &key, hot..hot + 1, None).await.unwrap();
    let hot_share = 50.0 / (50.0 + normal.len() as f64);
    let want = (16.0 * 1500.0 * hot_share) as usize;
    assert!(
        hot_only.len() > want * 9 / 10 && hot_only.len() < want * 11 / 10,
        "hot partition holds {} records, about {want} expected",
        hot_only.len()
    );
    assert!(read_all(&client, &key, 10..11, None)
        .await
        .unwrap()
        .is_empty());
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_winning_attempt_of_each_map_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(2, dir.path(), |_| {}).await;
    let client = cluster.client().unwrap();
    let key = ShuffleKey::new("attempts", 3);
    let (maps, partitions) = (4u32, 8u32);
    let handle = client
        .register_shuffle(&key, maps, partitions)
        .await
        .unwrap();
    let records = |count: u32, seq_base: u32| -> Vec<(u32, u32, usize)> {
        (0..count)
            .map(|i| (i % partitions, seq_base + i, 200))
            .collect()
    };

    let map0_bytes: u64 = write_map(&client, &handle, 0, 0, &records(500, 0))
        .await
        .unwrap()
        .partition_bytes
        .iter()
        .sum();

    // Map 1, attempt 0 dies half-way: its first half reached the workers (flushed and acked),
    // then the task is gone without MapperEnd. Its records carry seq >= 2_000_000.
    let mut dying = client.writer(handle.clone(), 1, 0).unwrap();
    let mut record = Vec::new();
    for (partition, seq, size) in records(250, 2_000_000) {
        record.clear();
        records::encode(&mut record, 1, seq, size);
        dying.write(partition, &record).await.unwrap();
    }
    dying.flush().await.unwrap();
    assert_eq!(dying.buffered_bytes(), 0);
    drop(dying);

    // Map 2: attempt 0 ends first; a speculative attempt 1 (seq >= 1_000_000) ends later.
    let mut winners_bytes: u64 = 0;
    winners_bytes += write_map(&client, &handle, 2, 0, &records(500, 0))
        .await
        .unwrap()
        .partition_bytes
        .iter()
        .sum::<u64>();
    let late = write_map(&client, &handle, 2, 1, &records(500, 1_000_000))
        .await
        .unwrap();
    assert_eq!(late.winning_attempt, 0, "the later attempt is told it lost");

    // The retry of map 1 (attempt 1) and map 3 complete the shuffle.
    let retry = write_map(&client, &handle, 1, 1, &records(500, 0))
        .await
        .unwrap();
    assert_eq!(retry.winning_attempt, 1);
    winners_bytes += retry.partition_bytes.iter().sum::<u64>();
    let map3 = write_map(&client, &handle, 3, 0, &records(500, 0))
        .await
        .unwrap();
    winners_bytes += map3.partition_bytes.iter().sum::<u64>();

    let seen = read_all(&client, &key, 0..partitions, None).await.unwrap();
    assert_exactly(
        &seen,
        (0..maps).flat_map(|map| (0..500).map(move |seq| RecordId { map, seq })),
    );
    // The losing attempts' batches really are in the files (and were dropped by the reader):
    // the files hold more than the winners of maps 1 to 3 plus map 0 wrote.
    let on_disk: u64 = (0..2)
        .flat_map(|w| data_files(&cluster.data_dir(w)))
        .map(|f| std::fs::metadata(f).unwrap().len())
        .sum();
    assert!(
        on_disk > winners_bytes * 4 / 3 + 1000,
        "{on_disk} bytes on disk, winners of maps 1-3 wrote {winners_bytes}"
    );

    // A straggler (a retry of map 3 after the commit) is refused by the workers: it finishes
    // without error, reporting the winning attempt and its sizes, and the committed output is
    // unchanged.
    let straggler = write_map(&client, &handle, 3, 7, &records(50, 3_000_000))
        .await
        .unwrap();
    assert_eq!(straggler.winning_attempt, 0);
    assert_eq!(straggler.partition_bytes, map3.partition_bytes);
    let again = read_all(&client, &key, 0..partitions, None).await.unwrap();
    assert_eq!(again, seen);

    // A reader counts the stored bytes of the batches it took: the winners' sizes, once each,
    // though both copies and the losing attempts' batches were there to read.
    let mut reader = client.reader(&key, 0..partitions, None).await.unwrap();
    while reader.next().await.unwrap().is_some() {}
    assert_eq!(reader.bytes_read(), map0_bytes + winners_bytes);
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn map_range_reads_return_exactly_the_maps_in_the_range() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(2, dir.path(), |_| {}).await;
    let client = cluster.client().unwrap();
    let key = ShuffleKey::new("map-range", 0);
    let (maps, partitions) = (6u32, 5u32);
    let handle = client
        .register_shuffle(&key, maps, partitions)
        .await
        .unwrap();
    let mut written: Vec<(u32, u32, u32)> = Vec::new();
    for map in 0..maps {
        // Map 4 writes nothing at all.
        let count = if map == 4 { 0 } else { 300 + map * 10 };
        let records: Vec<_> = (0..count)
            .map(|seq| ((seq * 7 + map) % partitions, seq, 64))
            .collect();
        written.extend(records.iter().map(|&(p, seq, _)| (map, seq, p)));
        write_map(&client, &handle, map, 0, &records).await.unwrap();
    }
    for (maps_range, parts) in [
        (2..4, 0..5),
        (0..1, 0..5),
        (3..6, 1..2),
        (4..5, 0..5),
        (0..6, 2..4),
    ] {
        let seen = read_all(&client, &key, parts.clone(), Some(maps_range.clone()))
            .await
            .unwrap();
        let expected = written
            .iter()
            .filter(|(map, _, p)| maps_range.contains(map) && parts.contains(p))
            .map(|&(map, seq, _)| RecordId { map, seq });
        assert_exactly(&seen, expected);
    }
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_on_disk_fails_the_read_naming_the_partition() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(1, dir.path(), |_| {}).await;
    let client = cluster.client().unwrap();
    let key = ShuffleKey::new("corrupt", 0);
    let handle = client.register_shuffle(&key, 2, 4).await.unwrap();
    for map in 0..2 {
        let records: Vec<_> = (0..2000).map(|seq| (seq % 4, seq, 100)).collect();
        write_map(&client, &handle, map, 0, &records).await.unwrap();
    }
    // Wait for the commit, then flip one byte in the middle of partition 2's file.
    read_all(&client, &key, 0..1, None).await.unwrap();
    let file = data_files(&cluster.data_dir(0))
        .into_iter()
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("2-"))
        .expect("partition 2 has a data file");
    let mut bytes = std::fs::read(&file).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&file, &bytes).unwrap();

    let error = read_all(&client, &key, 2..3, None).await.unwrap_err();
    assert!(error.is_data_loss(), "{error}");
    let message = error.to_string();
    assert!(message.contains("partition 2"), "{message}");
    assert!(message.contains("corrupt/0"), "{message}");
    // The other partitions are intact.
    assert_eq!(
        read_all(&client, &key, 3..4, None).await.unwrap().len(),
        1000
    );
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiny_memory_budget_still_completes_the_shuffle() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(1, dir.path(), |o| {
        o.worker.memory_budget = bytesize::ByteSize::kib(64);
        o.worker.busy_wait = Duration::from_millis(20);
    })
    .await;
    let client = cluster.client().unwrap();
    let key = ShuffleKey::new("tiny-memory", 0);
    let (maps, partitions) = (4u32, 16u32);
    let handle = client
        .register_shuffle(&key, maps, partitions)
        .await
        .unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for map in 0..maps {
        let (client, handle) = (client.clone(), handle.clone());
        tasks.spawn(async move {
            let records: Vec<_> = (0..8000).map(|seq| (seq % partitions, seq, 1000)).collect();
            write_map(&client, &handle, map, 0, &records).await.unwrap();
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    let seen = read_all(&client, &key, 0..partitions, None).await.unwrap();
    assert_exactly(
        &seen,
        (0..maps).flat_map(|map| (0..8000).map(move |seq| RecordId { map, seq })),
    );
    cluster.shutdown().await.unwrap();
}

async fn shuffle_with_engine(engine: IoEngineConfig) {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(2, dir.path(), |o| {
        o.worker.io_engine = engine;
        o.worker.flush_buffer_size = bytesize::ByteSize::kib(64);
        o.worker.fsync_on_commit = true;
    })
    .await;
    let client = cluster.client().unwrap();
    let key = ShuffleKey::new("engines", 0);
    let handle = client.register_shuffle(&key, 3, 20).await.unwrap();
    let mut expected = Vec::new();
    for map in 0..3 {
        let records = skewed_records(map, 3000, 20, 3);
        expected.extend(records.iter().map(|&(_, seq, _)| RecordId { map, seq }));
        write_map(&client, &handle, map, 0, &records).await.unwrap();
    }
    let seen = read_all(&client, &key, 0..20, None).await.unwrap();
    assert_exactly(&seen, expected);
    let seen = read_all(&client, &key, 0..20, Some(1..2)).await.unwrap();
    assert_eq!(seen.keys().filter(|id| id.map != 1).count(), 0);
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_positional_write_engine_serves_a_shuffle() {
    shuffle_with_engine(IoEngineConfig::Sync).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_io_uring_engine_serves_a_shuffle() {
    if let Err(e) = sluice_worker::storage::engine::probe_uring() {
        // Kernels or sandboxes without io_uring: the fallback test above covers storage; say so.
        assert!(
            std::env::var_os("SLUICE_ALLOW_NO_URING").is_some(),
            "io_uring is unavailable here ({e}); set SLUICE_ALLOW_NO_URING=1 to accept that"
        );
        eprintln!("io_uring unavailable ({e}): not run");
        return;
    }
    shuffle_with_engine(IoEngineConfig::IoUring).await;
}

async fn wait_until(what: &str, limit: Duration, mut condition: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unregistered_and_expired_shuffles_are_deleted_on_workers() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(2, dir.path(), |o| {
        o.master.app_timeout = Duration::from_secs(2)
    })
    .await;
    let client = cluster.client().unwrap();
    let app_dirs = |app: &str| -> Vec<PathBuf> {
        (0..2)
            .map(|w| cluster.data_dir(w).join(app))
            .filter(|p| p.exists())
            .collect()
    };
    for app in ["gone", "expired", "alive"] {
        let key = ShuffleKey::new(app, 0);
        let handle = client.register_shuffle(&key, 1, 4).await.unwrap();
        write_map(
            &client,
            &handle,
            0,
            0,
            &[(0, 0, 100), (1, 1, 100), (3, 2, 50)],
        )
        .await
        .unwrap();
        assert_eq!(read_all(&client, &key, 0..4, None).await.unwrap().len(), 3);
        assert!(!app_dirs(app).is_empty(), "{app} wrote files");
    }
    client
        .unregister_shuffle(&ShuffleKey::new("gone", 0))
        .await
        .unwrap();
    wait_until(
        "the unregistered shuffle is deleted",
        Duration::from_secs(20),
        async || app_dirs("gone").iter().all(|d| !d.join("0").exists()),
    )
    .await;
    // "alive" heartbeats; "expired" does not and is deleted after the timeout.
    wait_until(
        "the silent application is deleted",
        Duration::from_secs(30),
        async || {
            client.app_heartbeat("alive").await.unwrap();
            app_dirs("expired").is_empty()
        },
    )
    .await;
    assert!(
        !app_dirs("alive").is_empty(),
        "a heartbeating application kept its data"
    );
    assert_eq!(
        read_all(&client, &ShuffleKey::new("alive", 0), 0..4, None)
            .await
            .unwrap()
            .len(),
        3
    );
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_worker_is_lost_and_gets_no_new_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = cluster(3, dir.path(), |o| {
        o.master.worker_timeout = Duration::from_secs(1)
    })
    .await;
    let client = cluster.client().unwrap();
    let stopped = cluster.workers()[1].id.clone();
    cluster.stop_worker(1).await.unwrap();
    wait_until(
        "the master declares the worker lost",
        Duration::from_secs(20),
        async || {
            let status = client.cluster_status().await.unwrap();
            status
                .workers
                .iter()
                .any(|w| w.worker.as_ref().unwrap().id == stopped && !w.alive)
        },
    )
    .await;
    let key = ShuffleKey::new("after-loss", 0);
    let handle = client.register_shuffle(&key, 2, 30).await.unwrap();
    let used: Vec<&str> = handle
        .locations
        .workers
        .iter()
        .map(|w| w.id.as_str())
        .collect();
    assert_eq!(used.len(), 2, "{used:?}");
    assert!(!used.contains(&stopped.as_str()), "{used:?}");
    for map in 0..2 {
        let records: Vec<_> = (0..300).map(|seq| (seq % 30, seq, 80)).collect();
        write_map(&client, &handle, map, 0, &records).await.unwrap();
    }
    assert_eq!(
        read_all(&client, &key, 0..30, None).await.unwrap().len(),
        600
    );
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_worker_not_yet_declared_lost_is_placed_around() {
    let dir = tempfile::tempdir().unwrap();
    // The master would need 30 s to notice: the reservation itself must find out.
    let mut cluster = cluster(3, dir.path(), |_| {}).await;
    let client = cluster.client().unwrap();
    let dead = cluster.workers()[0].id.clone();
    cluster.stop_worker(0).await.unwrap();
    for shuffle in 0..3 {
        let key = ShuffleKey::new("placed-around", shuffle);
        let handle = client.register_shuffle(&key, 2, 40).await.unwrap();
        let used: Vec<&str> = handle
            .locations
            .workers
            .iter()
            .map(|w| w.id.as_str())
            .collect();
        assert!(!used.contains(&dead.as_str()), "{used:?}");
        let mut expected = Vec::new();
        for map in 0..2 {
            let records: Vec<_> = (0..400).map(|seq| (seq % 40, seq, 60)).collect();
            expected.extend((0..400).map(|seq| RecordId { map, seq }));
            write_map(&client, &handle, map, 0, &records).await.unwrap();
        }
        assert_exactly(
            &read_all(&client, &key, 0..40, None).await.unwrap(),
            expected,
        );
    }
    cluster.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_spreads_partitions_over_its_data_directories() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = cluster(1, dir.path(), |o| o.disks_per_worker = 3).await;
    let disks: Vec<PathBuf> = (0..3)
        .map(|d| cluster.data_dir(0).join(format!("disk-{d}")))
        .collect();
    let client = cluster.client().unwrap();
    let key = ShuffleKey::new("many-disks", 0);
    let handle = client.register_shuffle(&key, 2, 30).await.unwrap();
    let mut expected = Vec::new();
    for map in 0..2 {
        let records: Vec<_> = (0..900).map(|seq| (seq % 30, seq, 120)).collect();
        expected.extend((0..900).map(|seq| RecordId { map, seq }));
        write_map(&client, &handle, map, 0, &records).await.unwrap();
    }
    assert_exactly(
        &read_all(&client, &key, 0..30, None).await.unwrap(),
        expected,
    );
    let per_disk: Vec<usize> = disks.iter().map(|d| data_files(d).len()).collect();
    assert_eq!(per_disk, vec![10, 10, 10], "data files per directory");
    cluster.shutdown().await.unwrap();
}
